"""The heuristic with the host's own operators: where (gradient pressure), what and how much
(the widest width step the budget affords), on the signals a real trainer produces."""

from __future__ import annotations

from collections.abc import Collection

from esper.leyline import ActionKind, EpochSignals, GrowthBudget
from esper.runtime import get_task
from esper.runtime.session import build_trainer, operators_for
from esper.tamiyo import BlueprintRotation, HeuristicConfig, HeuristicController, TrackerConfig
from esper.tolaria.engine import MorphogeneticTrainer

BLUEPRINTS = ["residual_block", "widen", "widen_half", "deepen"]
# Short of capacity from the second epoch on, whatever the losses do.
ALWAYS_SHORT = TrackerConfig(warmup_epochs=1, progress_window=1, underfit_progress=1.0)


class _Offered(BlueprintRotation):
    """A rotation that keeps what it was offered each time."""

    def __init__(self) -> None:
        super().__init__(BLUEPRINTS)
        self.offered: list[set[str]] = []

    def select_blueprint(self, allowed: Collection[str] | None = None) -> str:
        self.offered.append(set(allowed or ()))
        return super().select_blueprint(allowed)


def _trainer(budget: GrowthBudget | None = None) -> MorphogeneticTrainer:
    spec = get_task("digits")
    return build_trainer(spec, spec.load_data(), seed=0, budget=budget, blueprints=BLUEPRINTS)


def _two_epochs(trainer: MorphogeneticTrainer, controller: HeuristicController) -> tuple[EpochSignals, list]:
    """Epoch 0 (no history: nothing planted), then epoch 1's signals and decision."""
    assert controller.decide(trainer.signals(trainer.run_epoch(), total_epochs=10)) == []
    trainer.end_epoch()
    signals = trainer.signals(trainer.run_epoch(), total_epochs=10)
    return signals, controller.decide(signals)


def _heuristic(chooser: BlueprintRotation) -> HeuristicController:
    config = HeuristicConfig(tracker=ALWAYS_SHORT, min_epochs_left=0)
    return HeuristicController(chooser, config, operators_for("cnn", BLUEPRINTS))


def test_a_network_short_of_capacity_widens_the_layer_the_loss_pushes_hardest_doubling_it() -> None:
    chooser = _Offered()
    signals, (action,) = _two_epochs(_trainer(), _heuristic(chooser))
    pressure = signals.pressure
    assert pressure is not None and set(pressure) == {"block2", "block3"}
    assert all(value > 0 for value in pressure.values())
    assert pressure["block2"] != pressure["block3"]
    assert action.kind == ActionKind.GERMINATE
    assert action.slot_id == max(pressure, key=pressure.__getitem__)
    # Short of capacity: the host's own layers (width, depth), the widest width step, no branch.
    assert chooser.offered[-1] == {"widen", "deepen"}
    assert action.blueprint_id == "widen" and "pushed hardest" in action.reason


def test_a_tight_budget_gets_the_smaller_width_step() -> None:
    probe = _trainer(GrowthBudget(max_params_added=10**9))
    signals, _ = _two_epochs(probe, _heuristic(BlueprintRotation(BLUEPRINTS)))
    target = max(signals.pressure, key=signals.pressure.__getitem__)
    half, full = (probe.budget.seed_cost(target, b).params for b in ("widen_half", "widen"))
    assert half < full
    chooser = _Offered()
    trainer = _trainer(GrowthBudget(max_params_added=half))  # affords x1.5 there, not x2
    signals, (action,) = _two_epochs(trainer, _heuristic(chooser))
    assert signals.affordable is not None and "widen" not in signals.affordable[action.slot_id]
    assert "widen_half" in chooser.offered[-1] and "widen" not in chooser.offered[-1]
    assert action.blueprint_id in signals.affordable[action.slot_id]


def test_on_a_plateau_every_plantable_blueprint_is_offered_with_one_width_step() -> None:
    chooser = _Offered()
    controller = _heuristic(chooser)
    offered = controller._offer(["residual_block", "widen", "widen_half", "deepen"], short_of_capacity=False)
    assert offered == ["residual_block", "widen", "deepen"]
    # Without any own-layer operator to plant, a network short of capacity grows a branch.
    assert controller._offer(["residual_block"], short_of_capacity=True) == ["residual_block"]


def test_a_width_seed_that_does_not_hurt_is_kept_where_a_branch_must_show_a_contribution() -> None:
    from conftest import epoch_signals, seed_report

    from esper.leyline import SeedStage

    def decision(blueprint: str, contribution: float) -> list:
        controller = _heuristic(BlueprintRotation(BLUEPRINTS))
        report = seed_report(SeedStage.PROBATIONARY, blueprint_id=blueprint, slot_id="block2", contribution=contribution)
        signals = epoch_signals(12, total_epochs=20, slots={"block2": report, "block3": None})
        return [(a.kind, a.slot_id) for a in controller.decide(signals) if a.kind != ActionKind.GERMINATE]

    kept = [(ActionKind.FOSSILIZE, "block2")]
    # Net2Wider starts as the host's function: alpha 0 and 1 agree, so ~0 is what it shows.
    assert decision("widen", 0.0) == kept and decision("deepen", 0.0) == kept
    assert decision("residual_block", 0.0) == []  # below fossilize_above: not yet
    assert decision("residual_block", 0.05) == kept
    assert decision("widen", -0.05) == [(ActionKind.CULL, "block2")]  # it hurts
