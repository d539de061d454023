"""The heuristic job end to end: run folder, lifecycle events, resume, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from esper.jobs.config import HeuristicRunConfig, build_config
from esper.jobs.heuristic import run_heuristic
from esper.jobs.report import format_flops, print_summary
from esper.leyline import LIFECYCLE_EVENTS, TelemetryEventType
from esper.nissa import read_jsonl
from esper.nissa.run_folder import RunFolder
from esper.tolaria import MorphogeneticTrainer

# Eager enough that seeds are planted, blended and judged inside a 14-epoch run:
# any gain under 10 points counts as a plateau, and any measured seed is kept.
FAST_HEURISTIC = {
    "min_epochs_left": 0,
    "germination_cooldown": 1,
    "fossilize_above": -1.0,
    "tracker": {"plateau_patience": 1, "warmup_epochs": 1, "min_delta": 0.1, "stable_loss_change": 10.0},
}


def _config(**overrides) -> HeuristicRunConfig:
    values = {"task": "digits", "epochs": 14, "seed": 3, "checkpoint_every": 4, "heuristic": FAST_HEURISTIC}
    return HeuristicRunConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    summary = run_heuristic(_config(baseline=True), run_dir)
    return run_dir, summary


def test_run_folder_has_every_artifact(finished_run) -> None:
    run_dir, summary = finished_run
    for name in ("config.json", "events.jsonl", "metrics.jsonl", "summary.json", "baseline.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoints" / "final.pt").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("epoch_*.pt")) == [
        "epoch_0004.pt", "epoch_0008.pt", "epoch_0012.pt"
    ]
    payload = torch.load(run_dir / "checkpoints" / "final.pt", weights_only=True)
    assert payload["trainer"]["epoch"] == 14
    assert json.loads((run_dir / "summary.json").read_text()) == json.loads(json.dumps(summary, default=str))
    assert summary["host_only_val_accuracy"] is not None
    assert 0.0 < summary["final_val_accuracy"] <= 1.0


def test_metrics_and_lifecycle_events_are_complete(finished_run) -> None:
    run_dir, summary = finished_run
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == list(range(14))
    events = read_jsonl(run_dir / "events.jsonl")
    lifecycle = [e for e in events if TelemetryEventType(e["event_type"]) in LIFECYCLE_EVENTS]
    assert lifecycle, "the fast heuristic should have planted at least one seed"
    for event in lifecycle:
        for key in ("slot_id", "seed_id", "blueprint_id", "epoch"):
            assert event[key] is not None, (key, event)
    germinated = sum(e["event_type"] == "seed_germinated" for e in events)
    assert summary["seeds"]["germinated"] == germinated


def test_flops_params_and_the_grown_architecture_are_in_metrics_and_summary(finished_run) -> None:
    run_dir, summary = finished_run
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    keys = {"training", "validation", "counterfactual", "cumulative_training", "cumulative_validation",
            "cumulative_counterfactual", "inference_per_sample"}  # fmt: skip
    for name in ("training", "validation", "counterfactual"):
        assert all(set(m["flops"]) == keys for m in metrics)
        assert summary["flops"][name] == pytest.approx(sum(m["flops"][name] for m in metrics), rel=1e-12)
        assert summary["flops"][name] == metrics[-1]["flops"][f"cumulative_{name}"]
    assert summary["flops"]["inference_per_sample"] == metrics[-1]["flops"]["inference_per_sample"] > 0
    stacks = metrics[-1]["fossils"]
    assert summary["architecture"]["slots"] == {slot: [f["blueprint_id"] for f in stack] for slot, stack in stacks.items()}
    assert summary["architecture"]["host"] == "CNNHost(3 blocks, 4 base channels)"
    params = summary["params"]
    assert params["total"] == params["host"] + params["added"] and params["added"] == summary["params_added"]
    console = Console(width=200, record=True)
    print_summary(summary, console)
    text = console.export_text()
    assert "training FLOPs (run)" in text and format_flops(summary["flops"]["training"]) in text


def _strip(records):
    """Drop wall-clock fields and run start/finish markers (a resumed run starts twice)."""
    kept = []
    for record in records:
        if record.get("event_type") in ("run_started", "run_finished"):
            continue
        record = {k: v for k, v in record.items() if k not in ("seconds", "timestamp")}
        if isinstance(record.get("data"), dict):
            record["data"] = {k: v for k, v in record["data"].items() if k != "seconds"}
        kept.append(record)
    return kept


def _crash_after(monkeypatch, epoch: int):
    """Make the next run stop (as Ctrl-C would) once `epoch` epochs are done; returns the undo."""
    real_end_epoch = MorphogeneticTrainer.end_epoch

    def crash(self):
        real_end_epoch(self)
        if self.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(MorphogeneticTrainer, "end_epoch", crash)
    return lambda: monkeypatch.setattr(MorphogeneticTrainer, "end_epoch", real_end_epoch)


@pytest.mark.parametrize("lr_schedule", ["constant", "cosine"])
def test_a_run_with_a_stack_resumes_to_byte_identical_metrics(tmp_path, monkeypatch, lr_schedule) -> None:
    """One slot, so growth stacks there: the checkpoint holds a fossil with a seed on top. With
    a cosine schedule the learning rates at the resumed epoch are the uninterrupted run's too."""
    config = _config(epochs=20, slots=["block2"], checkpoint_every=4, lr_schedule=lr_schedule)
    full_dir, run_dir = tmp_path / "full", tmp_path / "interrupted"
    run_heuristic(config, full_dir)
    undo = _crash_after(monkeypatch, 18)
    with pytest.raises(KeyboardInterrupt):
        run_heuristic(config, run_dir)
    undo()
    checkpoint = torch.load(run_dir / "checkpoints" / "epoch_0016.pt", weights_only=True)["trainer"]
    stack = checkpoint["slots"]["block2"]
    assert len(stack["fossils"]) >= 1 and stack["seed"] is not None  # a live seed on a fossil
    run_heuristic(None, run_dir, resume=True)
    for name in ("metrics.jsonl", "events.jsonl"):
        assert _strip(read_jsonl(run_dir / name)) == _strip(read_jsonl(full_dir / name)), name
    final = read_jsonl(full_dir / "metrics.jsonl")[-1]
    assert len(final["fossils"]["block2"]) >= 1


def test_resume_reaches_the_same_result_as_an_uninterrupted_run(finished_run, tmp_path, monkeypatch) -> None:
    full_dir, _ = finished_run
    run_dir = tmp_path / "interrupted"
    real_end_epoch = MorphogeneticTrainer.end_epoch

    def crash_after_nine(self):
        real_end_epoch(self)
        if self.epoch == 9:
            raise KeyboardInterrupt

    monkeypatch.setattr(MorphogeneticTrainer, "end_epoch", crash_after_nine)
    with pytest.raises(KeyboardInterrupt):
        run_heuristic(_config(baseline=True), run_dir)
    monkeypatch.setattr(MorphogeneticTrainer, "end_epoch", real_end_epoch)
    assert not (run_dir / "summary.json").exists()
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 8  # epoch 9's line never got written

    resumed = run_heuristic(None, run_dir, resume=True)
    for name in ("metrics.jsonl", "events.jsonl"):
        assert _strip(read_jsonl(run_dir / name)) == _strip(read_jsonl(full_dir / name)), name
    full = torch.load(full_dir / "checkpoints" / "final.pt", weights_only=True)["trainer"]["model"]
    again = torch.load(run_dir / "checkpoints" / "final.pt", weights_only=True)["trainer"]["model"]
    assert full.keys() == again.keys()
    for key in full:
        assert torch.equal(full[key], again[key]), key
    assert resumed["final_val_accuracy"] == json.loads((full_dir / "summary.json").read_text())["final_val_accuracy"]


def test_existing_run_folder_is_not_overwritten(finished_run) -> None:
    run_dir, _ = finished_run
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        run_heuristic(_config(), run_dir)
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_unknown_config_keys_are_named() -> None:
    with pytest.raises(ValueError, match="epochz"):
        build_config(HeuristicRunConfig, {"epochz": 3}, {})
    with pytest.raises(ValueError, match="fossilise_above"):
        run_heuristic(_config(heuristic={"fossilise_above": 0.1}), Path("/nonexistent/never-created"))


def test_resume_of_a_missing_folder_says_so(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="run folder"):
        run_heuristic(None, tmp_path / "nothing", resume=True)


def test_truncate_logs_keeps_earlier_epochs(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    folder.metrics_path.write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(5)))
    folder.truncate_logs(3)
    assert [r["epoch"] for r in read_jsonl(folder.metrics_path)] == [0, 1, 2]


def test_curriculum_is_saved_and_carried_into_the_next_run(finished_run, tmp_path) -> None:
    run_dir, summary = finished_run
    saved = json.loads((run_dir / "curriculum.json").read_text())
    # Every seed whose fate was decided was reported to the curriculum as one trial.
    decided = summary["seeds"]["fossilized"] + summary["seeds"]["culled"]
    assert sum(saved["trials"]) == decided > 0
    follow_up = tmp_path / "next"
    run_heuristic(_config(epochs=3, curriculum=str(run_dir / "curriculum.json")), follow_up)
    carried = json.loads((follow_up / "curriculum.json").read_text())
    assert sum(carried["trials"]) >= sum(saved["trials"])


def test_curriculum_for_other_blueprints_is_refused(finished_run, tmp_path) -> None:
    run_dir, _ = finished_run
    with pytest.raises(ValueError, match="same --blueprints"):
        run_heuristic(
            _config(blueprints=["norm", "attention"], curriculum=str(run_dir / "curriculum.json")),
            tmp_path / "x",
        )


def test_rotation_chooser_writes_no_curriculum(tmp_path) -> None:
    run_heuristic(_config(epochs=2, chooser="rotation"), tmp_path / "rot")
    assert not (tmp_path / "rot" / "curriculum.json").exists()
    with pytest.raises(ValueError, match="chooser"):
        _config(chooser="bandit")


def test_a_run_folder_of_an_older_run_file_format_is_refused_in_one_line(finished_run, tmp_path, capsys) -> None:
    """Resume and report read the current format only; an older folder is named with what wrote it."""
    import shutil

    from esper.cli import main

    run_dir = tmp_path / "old"
    shutil.copytree(finished_run[0], run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    del config["run_format"]  # as Esper wrote it before run files had a format number
    config["esper_version"] = "0.0.9"
    (run_dir / "config.json").write_text(json.dumps(config))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    for argv in (["train", "heuristic", "--resume", str(run_dir)], ["report", str(run_dir)]):
        assert main(argv) == 2
        (line,) = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
        assert f"{run_dir / 'config.json'} was written by Esper 0.0.9 in run-file format 1; " in line
        assert "run it again with this Esper" in line
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # nothing touched


def test_a_checkpoint_of_an_older_run_file_format_is_refused_not_skipped(finished_run, tmp_path) -> None:
    import shutil

    from esper.nissa.files import RunFormatError

    run_dir = tmp_path / "old-checkpoint"
    shutil.copytree(finished_run[0], run_dir)
    (run_dir / "checkpoints" / "final.pt").unlink()  # interrupted: resuming reads its last checkpoint
    last = max((run_dir / "checkpoints").glob("epoch_*.pt"))
    payload = torch.load(last, weights_only=True)
    del payload["run_format"]
    torch.save(payload, last)
    with pytest.raises(RunFormatError, match=rf"{last.name} was written by Esper .* in run-file format 1; "):
        run_heuristic(None, run_dir, resume=True)
