"""The growth budget: a candidate's cost before planting, refusals, and who obeys them."""

from __future__ import annotations

import pytest
import torch
from seed_lifecycle import grow
from torch.utils.flop_counter import FlopCounterMode

from esper.cli import main
from esper.kasmina.blueprints import BlueprintRegistry
from esper.leyline import Action, ActionKind, GrowthBudget, SeedStage
from esper.runtime import get_task
from esper.runtime.session import build_trainer
from esper.simic.actions import ActionSpace
from esper.tamiyo import BlueprintRotation, HeuristicConfig, HeuristicController, TrackerConfig

BLUEPRINTS = ["norm", "conv_light", "residual_block"]


def _trainer(budget: GrowthBudget):
    spec = get_task("digits")
    return build_trainer(spec, spec.load_data(), seed=0, budget=budget, blueprints=BLUEPRINTS)


def test_a_seed_costs_what_it_adds_once_planted() -> None:
    trainer = _trainer(GrowthBudget(max_params_added=10**9))
    guard, model = trainer.budget, trainer.model
    before = trainer.flops.profile().inference
    for slot_id in ("block2", "block3"):
        cost = guard.seed_cost(slot_id, "residual_block")
        slot = model.seed_slots[slot_id]
        real = BlueprintRegistry.create("cnn", "residual_block", slot.channels)
        assert cost.params == sum(p.numel() for p in real.parameters())
        features = torch.zeros(1, *trainer.flops.measured().slot_input_shapes()[slot_id])
        real.eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            real(features)
        assert cost.inference_flops == counter.get_total_flops() > 0
    # Planted and grown to full strength, the seed adds exactly its cost to the network.
    cost = guard.seed_cost("block2", "residual_block")
    trainer.apply([Action(ActionKind.GERMINATE, "block2", "residual_block")])
    assert guard.grown().params == cost.params
    assert guard.grown().inference_flops == before + cost.inference_flops
    grow(model.seed_slots["block2"], SeedStage.FOSSILIZED)
    assert trainer.flops.profile().inference == guard.grown().inference_flops == before + cost.inference_flops
    assert trainer.flops.measured().committed_inference() == before + cost.inference_flops


def test_germinations_past_the_budget_are_refused_by_name() -> None:
    spec_cost = _trainer(GrowthBudget(max_params_added=10**9)).budget.seed_cost
    light, block = spec_cost("block2", "conv_light"), spec_cost("block2", "residual_block")
    trainer = _trainer(GrowthBudget(max_params_added=light.params + spec_cost("block2", "norm").params))
    affordable = trainer.budget.affordable()
    assert "residual_block" not in affordable["block2"] and "conv_light" in affordable["block2"]
    assert block.params > light.params
    with pytest.raises(ValueError, match="growth budget: residual_block in slot 'block2' adds .* over budget.max_params_added"):
        trainer.apply([Action(ActionKind.GERMINATE, "block2", "residual_block")])
    assert trainer.slots["block2"].state is None  # nothing planted
    trainer.apply([Action(ActionKind.GERMINATE, "block2", "conv_light")])
    # What is left after it affords only the cheapest, anywhere.
    left = trainer.budget.affordable()
    assert left["block3"] == ["norm"] or left["block3"] == []
    signals = trainer.signals(trainer.run_epoch(), total_epochs=10)
    assert signals.affordable == trainer.budget.affordable()
    # The policy's mask forbids what the budget refuses.
    space = ActionSpace(["block2", "block3"], BLUEPRINTS)
    allowed = {name for name, ok in zip(space.names(), space.mask(signals).tolist(), strict=True) if ok}
    assert "GERMINATE block3 residual_block" not in allowed and "GERMINATE block3 conv_light" not in allowed


def test_the_inference_flops_budget_counts_the_whole_grown_network() -> None:
    probe = _trainer(GrowthBudget(max_params_added=10**9))
    host = probe.flops.profile().inference
    one = probe.budget.seed_cost("block3", "conv_light").inference_flops
    trainer = _trainer(GrowthBudget(max_inference_flops=host + 1.5 * one))
    trainer.apply([Action(ActionKind.GERMINATE, "block3", "conv_light")])  # incubating: counted anyway
    why = trainer.budget.refusal("block3", "conv_light")
    assert why is not None and "over budget.max_inference_flops" in why


def test_the_heuristic_plants_only_what_the_budget_affords_and_stops_there() -> None:
    tracker = TrackerConfig(warmup_epochs=1, progress_window=1, underfit_progress=1.0)  # always short
    controller = HeuristicController(BlueprintRotation(["residual_block", "norm"]), HeuristicConfig(tracker=tracker, min_epochs_left=0))
    trainer = _trainer(GrowthBudget(max_params_added=200))  # norm seeds only
    assert controller.decide(trainer.signals(trainer.run_epoch(), total_epochs=10)) == []  # no history yet
    trainer.end_epoch()
    signals = trainer.signals(trainer.run_epoch(), total_epochs=10)
    (action,) = controller.decide(signals)
    assert (action.kind, action.blueprint_id) == (ActionKind.GERMINATE, "norm")
    signals.affordable = {"block2": [], "block3": []}  # nothing left: the budget is spent
    controller.last_germination_epoch = None
    assert controller.decide(signals) == []


def test_a_budget_smaller_than_any_blueprint_is_refused_before_anything_is_written(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    code = main(["train", "heuristic", "--task", "digits", "--max-params-added", "10", "--run-dir", str(run_dir), "--quiet"])
    assert code == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "smaller than any blueprint" in out and "max_params_added 10" in out
    assert not run_dir.exists()
    code = main(["train", "heuristic", "--task", "digits", "--max-inference-flops", "100", "--run-dir", str(run_dir), "--quiet"])
    assert code == 2 and "the host alone costs" in " ".join(capsys.readouterr().out.split())
    assert not run_dir.exists()


def test_signals_say_what_fraction_of_the_budget_is_left() -> None:
    light = _trainer(GrowthBudget(max_params_added=10**9)).budget.seed_cost("block2", "conv_light")
    host = _trainer(GrowthBudget(max_params_added=10**9)).flops.profile().inference
    budget = GrowthBudget(max_params_added=4 * light.params, max_inference_flops=2 * host)
    trainer = _trainer(budget)
    assert trainer.budget.left() == {"max_params_added": 1.0, "max_inference_flops": pytest.approx(0.5)}
    trainer.apply([Action(ActionKind.GERMINATE, "block2", "conv_light")])
    trainer.end_epoch()
    left = trainer.signals(trainer.run_epoch(), total_epochs=5).budget_left
    assert left["max_params_added"] == pytest.approx(0.75)
    assert left["max_inference_flops"] == pytest.approx(1.0 - (host + light.inference_flops) / (2 * host))
    unlimited = build_trainer(get_task("digits"), get_task("digits").load_data(), seed=0)
    assert unlimited.signals(unlimited.run_epoch(), total_epochs=5).budget_left is None
