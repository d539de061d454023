"""The run-config fields `esper compare`'s arms differ by: controller, host variant, built-in seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from esper.jobs.config import HeuristicRunConfig
from esper.jobs.heuristic import prepare_run, run_heuristic
from esper.kasmina.blueprints import BlueprintRegistry
from esper.nissa import read_jsonl
from esper.nissa.run_folder import read_json
from esper.runtime import get_task

# Plants a seed at the first chance, so a run that grows nothing is the controller's doing.
EAGER = {"min_epochs_left": 0, "germination_cooldown": 1,
         "tracker": {"warmup_epochs": 1, "plateau_patience": 1, "min_delta": 1.0, "stable_loss_change": 100.0}}  # fmt: skip


def _run(tmp_path: Path, name: str = "run", **fields) -> dict:
    config = HeuristicRunConfig(**{"task": "digits", "epochs": 4, "seed": 5, "heuristic": EAGER, **fields})
    return run_heuristic(config, tmp_path / name)


def test_controller_none_is_the_host_alone_trained_exactly_like_the_baseline(tmp_path: Path) -> None:
    summary = _run(tmp_path, controller="none", baseline=True)
    assert summary["seeds"] == {"germinated": 0, "fossilized": 0, "culled": 0}
    assert summary["params_added"] == 0
    # Same seed, host and data order as the host-only baseline, so the same numbers exactly.
    assert summary["final_val_accuracy"] == summary["host_only_val_accuracy"]
    assert read_json(tmp_path / "run" / "config.json")["config"]["controller"] == "none"


def test_the_heuristic_with_the_same_settings_does_grow(tmp_path: Path) -> None:
    assert _run(tmp_path)["seeds"]["germinated"] >= 1


def test_reference_host_and_built_in_seeds_change_the_network_trained(tmp_path: Path) -> None:
    spec = get_task("mnist5k-tiny")
    data = spec.load_data()
    tiny = sum(p.numel() for p in spec.build_host(data).parameters())
    reference = sum(p.numel() for p in spec.reference_host(data).parameters())
    width = spec.build_host(data).injection_points["block2"]
    seed = sum(p.numel() for p in BlueprintRegistry.create("cnn", "conv_light", width).parameters())
    common = {"task": "mnist5k-tiny", "controller": "none", "task_options": {}}
    ref = run_heuristic(HeuristicRunConfig(**common, epochs=1, host="reference"), tmp_path / "ref")
    assert ref["host_params"] == reference
    built = run_heuristic(
        HeuristicRunConfig(**common, epochs=1, built_in={"block2": ["conv_light", "conv_light"]}),
        tmp_path / "built",
    )
    # Built into the trunk: host parameters from the first step, no seed added.
    assert built["host_params"] == tiny + 2 * seed and built["params_added"] == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"host": "reference"}, "task 'digits' has no static reference host"),
        ({"built_in": {"block2": ["no_such_seed"]}}, "Unknown blueprint(s) ['no_such_seed']"),
        ({"built_in": {"block9": ["norm"]}}, "Unknown injection point 'block9'"),
        ({"controller": "nowhere/policy.pt"}, "policy file nowhere/policy.pt does not exist"),
    ],
)
def test_a_bad_variant_fails_before_the_run_folder_is_made(tmp_path: Path, fields, message) -> None:
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        _run(tmp_path, **fields)
    assert message in str(err.value)
    assert not (tmp_path / "run").exists()


def test_config_checks_the_variant_fields() -> None:
    with pytest.raises(ValueError, match="host must be one of task, reference"):
        HeuristicRunConfig(host="wide")
    with pytest.raises(ValueError, match="max_training_flops must be > 0"):
        HeuristicRunConfig(max_training_flops=0.0)
    with pytest.raises(ValueError, match="with model there is none to vary"):
        HeuristicRunConfig(model="examples.models:tiny", built_in={"block2": ["norm"]})


def test_a_policy_controls_the_run_on_its_own_slots_and_blueprints(tmp_path: Path, digits_policy: Path) -> None:
    summary = _run(tmp_path, controller=str(digits_policy))
    assert summary["status"] == "complete"
    meta = read_json(tmp_path / "run" / "transitions_meta.json")
    assert meta["blueprints"] == ["norm", "attention"]
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 4
    with pytest.raises(ValueError, match="acts on blueprints"):
        _run(tmp_path, "other", controller=str(digits_policy), blueprints=["norm"])
    with pytest.raises(ValueError, match="was trained on task 'digits', not 'mnist5k'; .* pass --transfer"):
        _run(tmp_path, "other", controller=str(digits_policy), task="mnist5k")


def test_a_transfer_applies_a_policy_to_another_task_of_its_topology(tmp_path: Path, digits_policy: Path) -> None:
    summary = _run(tmp_path, controller=str(digits_policy), task="mnist5k", transfer=True, epochs=2)
    assert summary["status"] == "complete"
    assert read_json(tmp_path / "run" / "transitions_meta.json")["task"] == "mnist5k"
    with pytest.raises(ValueError, match="block2"):  # a transformer has no such slot
        _run(tmp_path, "lm", controller=str(digits_policy), task="pydoc-chars-tiny", transfer=True, epochs=2)
    assert not (tmp_path / "lm").exists()
    with pytest.raises(ValueError, match="transfer applies a policy.pt"):
        HeuristicRunConfig(transfer=True)


def test_a_training_flops_cap_stops_the_run_within_a_batch_past_it(tmp_path: Path) -> None:
    full = _run(tmp_path, "full", controller="none")
    per_epoch = read_jsonl(tmp_path / "full" / "metrics.jsonl")[0]["flops"]["training"]
    cap = full["flops"]["training"] * 0.6  # 2.4 of the 4 epochs: the third is cut short
    capped = _run(tmp_path, "capped", controller="none", max_training_flops=cap)
    metrics = read_jsonl(tmp_path / "capped" / "metrics.jsonl")
    assert len(metrics) == 3
    spent = metrics[-1]["flops"]["cumulative_training"]
    assert cap <= spent < cap + per_epoch / 10  # digits: 12 training batches an epoch
    assert capped["flops"]["training"] == spent


def test_controller_schedule_plants_its_plan_when_due(tmp_path: Path) -> None:
    plan = [{"at": 0.0, "slot": "block2", "blueprint": "deepen"}, {"at": 0.5, "slot": "block2", "blueprint": "norm"}]
    summary = _run(tmp_path, controller="schedule", schedule=plan, epochs=20)
    assert summary["status"] == "complete"
    planted = [
        (event["epoch"], event["blueprint_id"])
        for event in read_jsonl(tmp_path / "run" / "events.jsonl")
        if event["event_type"] == "seed_germinated"
    ]
    assert [blueprint for _, blueprint in planted] == ["deepen", "norm"]
    assert planted[0][0] == 0 and planted[1][0] >= 10
    # The plan's blueprints are the run's: deepen starts from the host, so only a plan plants it.
    assert summary["blueprints"].keys() >= {"deepen", "norm"}


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ([{"at": 0.0, "slot": "block7", "blueprint": "norm"}], "unknown slot 'block7'"),
        ([{"at": 0.95, "slot": "block2", "blueprint": "norm"}], "due at epoch 19 of 20"),
        ([{"at": 0.0, "slot": "block2"}], "blueprint"),
    ],
)
def test_a_schedule_the_run_cannot_carry_out_is_refused_before_any_folder(tmp_path: Path, schedule, message) -> None:
    with pytest.raises(ValueError, match=message):
        _run(tmp_path, controller="schedule", schedule=schedule, epochs=20)
    assert not (tmp_path / "run").exists()


def test_a_schedule_run_adds_the_slots_its_plan_grows_and_restarts_its_cosine_there() -> None:
    plan = [{"at": 0.0, "slot": "block1", "blueprint": "widen"}, {"at": 0.5, "slot": "block2", "blueprint": "widen"}]
    config = HeuristicRunConfig(task="mnist5k-tiny", controller="schedule", schedule=plan, epochs=20, lr_schedule="cosine-restarts")
    run = prepare_run(config)
    # block1 is no slot of the task's (its heuristic and policies act at block2 and block3).
    assert run.slots == ("block1", "block2", "block3")
    assert get_task("mnist5k-tiny").slots == ("block2", "block3")
    assert prepare_run(HeuristicRunConfig(task="mnist5k-tiny")).slots == ("block2", "block3")
    # A host without a first-block slot refuses a plan that names one.
    with pytest.raises(ValueError, match="block1"):
        prepare_run(HeuristicRunConfig(task="digits", controller="schedule", schedule=plan, epochs=20))
    assert run.trainer.optimizers.config.lr_restarts == (0.5,)  # the growth steps after the start
