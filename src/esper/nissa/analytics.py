"""Per-blueprint outcome statistics: which seed architectures earn their place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table
from rich.text import Text

from esper.leyline import TelemetryEvent, TelemetryEventType


@dataclass(slots=True)
class _BlueprintStats:
    germinated: int = 0
    fossilized: int = 0
    culled: int = 0
    params_added: int = 0
    contributions: list[float] = field(default_factory=list)

    def mean_contribution(self) -> float | None:
        if not self.contributions:
            return None
        return sum(self.contributions) / len(self.contributions)


class BlueprintAnalytics:
    """Telemetry output counting germinations, fossilizations and culls per blueprint.

    Events that lack ``blueprint_id`` are attributed through the seed's
    germination event (matched by ``seed_id``); events that cannot be
    attributed either way are ignored.
    """

    def __init__(self) -> None:
        self._stats: dict[str, _BlueprintStats] = {}
        self._blueprint_of_seed: dict[str, str] = {}

    def handle(self, event: TelemetryEvent) -> None:
        kind = event.event_type
        if kind not in (
            TelemetryEventType.SEED_GERMINATED,
            TelemetryEventType.SEED_FOSSILIZED,
            TelemetryEventType.SEED_CULLED,
        ):
            return
        blueprint = event.blueprint_id or self._blueprint_of_seed.get(event.seed_id or "")
        if blueprint is None:
            return
        stats = self._stats.setdefault(blueprint, _BlueprintStats())
        if kind == TelemetryEventType.SEED_GERMINATED:
            stats.germinated += 1
            stats.params_added += int(event.data.get("params", 0))
            if event.seed_id is not None:
                self._blueprint_of_seed[event.seed_id] = blueprint
        elif kind == TelemetryEventType.SEED_FOSSILIZED:
            stats.fossilized += 1
            contribution = event.data.get("counterfactual_contribution")
            if contribution is not None:
                stats.contributions.append(float(contribution))
        else:
            stats.culled += 1

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{blueprint_id: {germinated, fossilized, culled, mean_contribution, params_added}}``;
        ``mean_contribution`` is None when no fossilized seed reported one."""
        return {
            blueprint: {
                "germinated": stats.germinated,
                "fossilized": stats.fossilized,
                "culled": stats.culled,
                "mean_contribution": stats.mean_contribution(),
                "params_added": stats.params_added,
            }
            for blueprint, stats in sorted(self._stats.items())
        }

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
