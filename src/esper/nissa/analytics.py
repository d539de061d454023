"""Per-blueprint outcome statistics: which seed architectures earn their place."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from esper.leyline import SeedLedger, TelemetryEvent, TelemetryEventType


class BlueprintAnalytics:
    """Telemetry output counting germinations, fossilizations and culls per blueprint.

    The counting is a `SeedLedger`'s: events that lack ``blueprint_id`` are
    attributed through the seed's germination event; events that cannot be
    attributed either way are not counted. Beside it, the params each
    blueprint's seeds added and the contributions its fossils were kept for.
    """

    def __init__(self) -> None:
        self.ledger = SeedLedger()
        self._params: dict[str, int] = {}
        self._contributions: dict[str, list[float]] = {}

    def handle(self, event: TelemetryEvent) -> None:
        seed = self.ledger.record_event(event)
        blueprint = event.blueprint_id or (seed.blueprint_id if seed is not None else None)
        if blueprint is None:
            return
        if event.event_type == TelemetryEventType.SEED_GERMINATED:
            self._params[blueprint] = self._params.get(blueprint, 0) + int(event.data.get("params", 0))
        elif event.event_type == TelemetryEventType.SEED_FOSSILIZED:
            contribution = event.data.get("counterfactual_contribution")
            if contribution is not None:
                self._contributions.setdefault(blueprint, []).append(float(contribution))

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{blueprint_id: {germinated, fossilized, culled, mean_contribution, params_added}}``;
        ``mean_contribution`` is None when no fossilized seed reported one."""
        summary = {}
        for blueprint, counts in sorted(self.ledger.by_blueprint.items()):
            contributions = self._contributions.get(blueprint)
            summary[blueprint] = {
                **counts,
                "mean_contribution": sum(contributions) / len(contributions) if contributions else None,
                "params_added": self._params.get(blueprint, 0),
            }
        return summary

    def table(self) -> Table:
        table = Table(title="Blueprints")
        table.add_column("blueprint")
        for column in ("germinated", "fossilized", "culled", "mean contribution", "params added"):
            table.add_column(column, justify="right")
        for blueprint, row in self.summary().items():
            mean = row["mean_contribution"]
            table.add_row(
                Text(blueprint),
                str(row["germinated"]),
                str(row["fossilized"]),
                str(row["culled"]),
                "-" if mean is None else f"{mean:+.4f}",
                f"{row['params_added']:,}",
            )
        return table
