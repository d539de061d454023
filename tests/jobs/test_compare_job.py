"""`esper compare` end to end on digits: the arms' mechanics, compare.json, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper.cli import main
from esper.jobs import compare as compare_job
from esper.jobs.compare import CompareConfig, arm_config, run_compare
from esper.jobs.compare_results import ARMS
from esper.jobs.heuristic import prepare_run
from esper.nissa import read_jsonl
from esper.nissa.run_folder import read_json
from esper.runtime import get_task

EPOCHS = 4
# Plants at the first chance and keeps any measured seed, so a 4-epoch run grows.
EAGER = {"min_epochs_left": 0, "germination_cooldown": 1, "fossilize_above": -1.0,
         "tracker": {"warmup_epochs": 0, "plateau_patience": 1, "min_delta": 1.0, "stable_loss_change": 100.0}}  # fmt: skip
RUN = {"heuristic": EAGER, "checkpoint_every": 1}


def _config(**fields) -> CompareConfig:
    return CompareConfig(**{"task": "digits", "seeds": 2, "first_seed": 7, "epochs": EPOCHS, "run": RUN, **fields})


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "digits"
    run_compare(_config(), out)
    return out


def test_every_arm_is_a_normal_run_folder(finished: Path) -> None:
    for seed in (7, 8):
        for arm in ("host-only", "grown", "static-final", "static-final-matched"):
            run = finished / f"seed-{seed}" / arm
            summary = read_json(run / "summary.json")
            assert summary["status"] == "complete" and summary["seed"] == seed, run
            assert (run / "checkpoints" / "final.pt").is_file()
        assert not (finished / f"seed-{seed}" / "static-reference").exists()  # digits has none


def test_arms_differ_only_in_what_they_train(finished: Path) -> None:
    seed = finished / "seed-7"
    configs = {arm: read_json(seed / arm / "config.json")["config"] for arm in ("host-only", "grown", "static-final")}
    assert configs["host-only"]["controller"] == "none" and configs["grown"]["controller"] == "heuristic"
    grown = read_json(seed / "grown" / "summary.json")
    assert configs["static-final"]["built_in"] == grown["architecture"]["slots"]
    for config in configs.values():  # same seed, so the same data order and host initialisation
        assert (config["seed"], config["epochs"], config["task"]) == (7, EPOCHS, "digits")
    host_only = read_jsonl(seed / "host-only" / "metrics.jsonl")
    assert [m["epoch"] for m in host_only] == list(range(EPOCHS))


def test_the_matched_arm_stops_at_the_grown_runs_training_flops(finished: Path) -> None:
    for seed in ("seed-7", "seed-8"):
        grown = read_json(finished / seed / "grown" / "summary.json")["flops"]["training"]
        final = read_json(finished / seed / "static-final" / "summary.json")["flops"]["training"]
        matched = read_jsonl(finished / seed / "static-final-matched" / "metrics.jsonl")
        spent = matched[-1]["flops"]["cumulative_training"]
        if final <= grown:  # static-final is cheaper: the cap never binds
            assert spent == pytest.approx(final)
            continue
        per_batch_at_most = matched[0]["flops"]["training"] / 10  # digits: 12 batches of <= 128
        assert grown <= spent < grown + per_batch_at_most
        assert read_json(finished / seed / "static-final-matched" / "config.json")["config"]["max_training_flops"] == grown


def test_compare_json_matches_the_arm_runs(finished: Path) -> None:
    results = read_json(finished / "compare.json")
    assert results["status"] == "complete" and results["runs_done"] == 8 and results["failed"] == []
    assert results["arms_planned"] == ["host-only", "grown", "static-final", "static-final-matched"]
    for arm, stats in results["arms"].items():
        finals = [read_jsonl(finished / path / "metrics.jsonl")[-1]["val_accuracy"] for path in stats["runs"].values()]
        assert stats["final_val_accuracy"]["mean"] == pytest.approx(sum(finals) / 2), arm
    host = results["arms"]["host-only"]["params"]["mean"]
    assert results["arms"]["grown"]["params"]["mean"] >= host
    assert {t["target"][:30] for t in results["targets"]} and len(results["targets"]) == 3
    for name in ("metric_vs_flops.png", "metric_vs_params.png"):
        assert (finished / name).read_bytes().startswith(b"\x89PNG")


def test_an_interrupted_compare_resumes_to_the_same_results(finished: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "cut"
    run_heuristic = compare_job.run_heuristic

    def cut_off(config, path, resume=False, console=None, progress=None):
        def stop_at_epoch_2(done: int, total: int) -> None:
            if path.name == "static-final" and path.parent.name == "seed-8" and done == 2:
                raise KeyboardInterrupt
        return run_heuristic(config, path, resume=resume, console=console, progress=stop_at_epoch_2)

    monkeypatch.setattr(compare_job, "run_heuristic", cut_off)
    argv = ["compare", "--task", "digits", "--seeds", "2", "--first-seed", "7", "--epochs", str(EPOCHS),
            "--config", str(_run_config(tmp_path)), "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 130
    cut = out / "seed-8" / "static-final"
    assert not (cut / "summary.json").exists() and (cut / "checkpoints" / "epoch_0002.pt").exists()
    monkeypatch.setattr(compare_job, "run_heuristic", run_heuristic)
    assert main(argv) == 0  # the same command again continues it
    resumed, uninterrupted = read_json(out / "compare.json"), read_json(finished / "compare.json")
    assert resumed["arms"] == uninterrupted["arms"] and resumed["differences"] == uninterrupted["differences"]


def _run_config(tmp_path: Path) -> Path:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(RUN))
    return path


def test_a_different_compare_in_the_same_folder_is_refused(finished: Path, capsys) -> None:
    assert main(["compare", "--task", "digits", "--seeds", "3", "--out", str(finished)]) == 2
    assert "holds a compare with other settings" in capsys.readouterr().out


def test_a_policy_grows_beside_the_heuristic_on_the_same_seeds(tmp_path: Path) -> None:
    policy = tmp_path / "ppo"
    argv = ["train", "ppo", "--task", "digits", "--rounds", "1", "--envs", "2", "--episode-length", str(EPOCHS),
            "--update-epochs", "1", "--run-dir", str(policy), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = tmp_path / "compare"
    run_compare(_config(seeds=1, controller=str(policy / "policy.pt"), arms=["host-only", "grown", "policy"]), out)
    configs = {arm: read_json(out / "seed-7" / arm / "config.json")["config"] for arm in ("grown", "policy")}
    assert configs["grown"]["controller"] == "heuristic" and configs["policy"]["controller"] == str(policy / "policy.pt")
    results = read_json(out / "compare.json")
    assert results["arms_planned"] == ["host-only", "grown", "policy"] and results["status"] == "complete"
    grown, by_policy = (read_jsonl(out / "seed-7" / arm / "metrics.jsonl")[-1]["val_accuracy"] for arm in ("grown", "policy"))
    assert results["differences"]["policy - grown"]["final_val_accuracy"]["mean"] == pytest.approx(by_policy - grown)
    # host-only, grown and policy planned: grown's target over host-only, and the policy's two (one seed: no SE to judge by).
    assert [(t["target"].split()[0], t["met"]) for t in results["targets"]] == [("grown", None), ("policy", None), ("policy", None)]
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert "Where, what and when heuristic and policy ppo grew" in (tmp_path / "report" / "report.html").read_text()
    with pytest.raises(ValueError, match="give --controller POLICY.pt"):
        _config(arms=["host-only", "policy"])


def test_a_policy_from_another_task_is_compared_only_when_transferred(tmp_path: Path, digits_policy: Path, capsys) -> None:
    argv = ["compare", "--task", "mnist5k", "--seeds", "1", "--first-seed", "10000", "--epochs", "1",
            "--controller", str(digits_policy), "--arms", "grown", "policy", "--quiet"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 2
    assert "trained on task 'digits', not 'mnist5k'" in capsys.readouterr().out
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "transfer"
    assert main([*argv, "--transfer", "--out", str(out)]) == 0
    configs = {arm: read_json(out / "seed-10000" / arm / "config.json")["config"] for arm in ("grown", "policy")}
    assert configs["policy"]["transfer"] and not configs["grown"]["transfer"]  # the heuristic is not a transfer
    results = read_json(out / "compare.json")
    assert results["status"] == "complete"
    assert [t["target"].split(",")[:2] for t in results["targets"]] == [["policy", " trained on another task"]]


def test_every_arm_warms_up_as_the_task_does() -> None:
    """One schedule for every arm, the reference's and the static-final ones' host variants
    included (a run-config `lr_warmup` replaces the task's the same way, in `prepare_run`)."""
    config = CompareConfig(task="pydoc-chars-tiny")
    grown = {"architecture": {"slots": {"layer1": ["block"]}}, "flops": {"training": 1e12}}
    warmups = {
        arm: prepare_run(arm_config(config, arm, 7, grown)).trainer.optimizers.config.lr_warmup
        for arm in ARMS
        if arm != "policy"
    }
    assert set(warmups.values()) == {get_task("pydoc-chars-tiny").lr_warmup} != {0.0}
