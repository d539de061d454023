"""What a lifecycle move means as an outcome, and the one ledger that counts outcomes.

A seed is planted (a move into GERMINATED) and its fate decided (a move into
FOSSILIZED or CULLED, whoever made it: the controller, the governor, an expiry).
Every count of these in Esper (run summaries, episode stats, the policy's
observations, blueprint analytics, the decisions figure, the heuristic's chooser)
is a `SeedLedger` fed with the lifecycle moves or the telemetry events of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from esper.leyline.reports import StageTransition
from esper.leyline.stages import SeedStage
from esper.leyline.telemetry import TelemetryEvent, TelemetryEventType

# The moves counted as outcomes, by the stage moved to, and the name each is counted under.
OUTCOME_OF_STAGE: dict[SeedStage, str] = {
    SeedStage.GERMINATED: "germinated",
    SeedStage.FOSSILIZED: "fossilized",
    SeedStage.CULLED: "culled",
}
OUTCOME_NAMES: tuple[str, ...] = tuple(OUTCOME_OF_STAGE.values())
# The outcomes that decide a seed's fate (its germination decides nothing).
FATES: tuple[str, ...] = ("fossilized", "culled")
# The telemetry event a slot emits for each outcome move.
OUTCOME_EVENTS: dict[SeedStage, TelemetryEventType] = {
    SeedStage.GERMINATED: TelemetryEventType.SEED_GERMINATED,
    SeedStage.FOSSILIZED: TelemetryEventType.SEED_FOSSILIZED,
    SeedStage.CULLED: TelemetryEventType.SEED_CULLED,
}
_STAGE_OF_EVENT = {event.value: stage for stage, event in OUTCOME_EVENTS.items()}


@dataclass(slots=True)
class PlantedSeed:
    """A seed the ledger saw germinate: where, what and when, and its fate (None: undecided)."""

    slot_id: str
    seed_id: str
    blueprint_id: str
    epoch: int
    fate: str | None = None


class SeedLedger:
    """Counts outcomes in total and per blueprint, and follows each planted seed to its fate.

    A fate whose germination the ledger did not see is counted, in total and under
    the move's blueprint when it names one, but follows no seed.
    """

    def __init__(self) -> None:
        self.totals: dict[str, int] = dict.fromkeys(OUTCOME_NAMES, 0)
        self.by_blueprint: dict[str, dict[str, int]] = {}
        self.seeds: dict[tuple[str, str], PlantedSeed] = {}  # (slot id, seed id) -> seed, in planting order

    def record(self, to_stage: SeedStage, slot_id: str, seed_id: str, blueprint_id: str | None, epoch: int) -> PlantedSeed | None:
        """Count one move into `to_stage`; returns the seed it planted or decided (None: no outcome,
        or the fate of a seed planted before the ledger started)."""
        name = OUTCOME_OF_STAGE.get(to_stage)
        if name is None:
            return None
        key = (slot_id, seed_id)
        if to_stage == SeedStage.GERMINATED:
            seed = self.seeds[key] = PlantedSeed(slot_id, seed_id, blueprint_id or "", epoch)
        else:
            seed = self.seeds.get(key)
            if seed is not None:
                seed.fate = name
        blueprint = blueprint_id or (seed.blueprint_id if seed is not None else None)
        self.totals[name] += 1
        if blueprint:
            self.by_blueprint.setdefault(blueprint, dict.fromkeys(OUTCOME_NAMES, 0))[name] += 1
        return seed

    def record_moves(self, moves: Iterable[StageTransition]) -> list[PlantedSeed]:
        """Count lifecycle moves in order; returns the seeds they decided."""
        decided = []
        for move in moves:
            seed = self.record(move.to_stage, move.slot_id, move.seed_id, move.blueprint_id, move.epoch)
            if seed is not None and move.to_stage != SeedStage.GERMINATED:
                decided.append(seed)
        return decided

    def record_event(self, event: TelemetryEvent | dict[str, Any]) -> PlantedSeed | None:
        """Count a slot's telemetry event (or its events.jsonl record) of an outcome move."""
        record = event.to_dict() if isinstance(event, TelemetryEvent) else event
        stage = _STAGE_OF_EVENT.get(record["event_type"])
        if stage is None:
            return None
        return self.record(stage, record.get("slot_id") or "", record.get("seed_id") or "",
                           record.get("blueprint_id"), record.get("epoch") or 0)  # fmt: skip

    def count(self, blueprint: str, name: str) -> int:
        return self.by_blueprint.get(blueprint, {}).get(name, 0)

    def undecided(self) -> list[PlantedSeed]:
        return [seed for seed in self.seeds.values() if seed.fate is None]

    def state_dict(self) -> dict[str, Any]:
        return {
            "totals": dict(self.totals),
            "by_blueprint": {k: dict(v) for k, v in self.by_blueprint.items()},
            "seeds": [asdict(seed) for seed in self.seeds.values()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.totals = dict(state["totals"])
        self.by_blueprint = {k: dict(v) for k, v in state["by_blueprint"].items()}
        self.seeds = {(s["slot_id"], s["seed_id"]): PlantedSeed(**s) for s in state["seeds"]}
