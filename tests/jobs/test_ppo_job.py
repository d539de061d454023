"""`esper train ppo` end to end on digits (tiny budget), resume, and `esper evaluate`."""

import json

import pytest
import torch

from esper.cli import main
from esper.jobs.evaluate import evaluate
from esper.jobs.ppo import PPORunConfig, run_ppo
from esper.nissa import read_jsonl
from esper.simic.policy import PolicyController

TINY = {"rounds": 2, "envs": 2, "episode_length": 4, "checkpoint_every": 1, "ppo": {"update_epochs": 2, "num_minibatches": 2}}


def test_tiny_run_writes_a_loadable_policy_and_the_run_folder(tmp_path):
    summary = run_ppo(PPORunConfig(**TINY), tmp_path / "run")
    run = tmp_path / "run"
    assert summary["mode"] == "ppo" and summary["rounds"] == 2
    assert json.loads((run / "summary.json").read_text())["mode"] == "ppo"
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [0, 1]
    for key in ("return", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "explained_variance", "rewards", "rewards_per_step", "actions"):
        assert key in metrics[0]
    assert len(metrics[0]["rewards_per_step"]["contribution"]) == 3  # episode_length - 1 decisions
    for m in metrics:  # the return without the potential-based terms, the policy's real earnings
        potentials = m["rewards"]["contribution"] + m["rewards"]["shaping"]
        assert m["return_without_potentials"]["mean"] == pytest.approx(m["return"]["mean"] - potentials)
    payload = torch.load(run / "policy.pt", weights_only=True)
    assert payload["task"] == "digits" and payload["round"] == 2
    assert len(payload["feature_names"]) == payload["normalizer"]["mean"].shape[0]
    controller = PolicyController.load(run / "policy.pt")
    assert controller.info["action_names"][0] == "WAIT"
    events = [e["event_type"] for e in read_jsonl(run / "events.jsonl")]
    assert events.count("ppo_update") == 2 and events[-1] == "run_finished"


def test_resume_continues_from_the_saved_round(tmp_path):
    run = tmp_path / "run"
    run_ppo(PPORunConfig(**{**TINY, "rounds": 3}), run)
    # Simulate a crash after round 2: drop the later checkpoints, keep the extra log lines.
    (run / "checkpoints" / "final.pt").unlink()
    (run / "checkpoints" / "epoch_0003.pt").unlink()
    summary = run_ppo(None, run, resume=True)
    assert summary["rounds_this_session"] == 1
    assert [m["round"] for m in read_jsonl(run / "metrics.jsonl")] == [0, 1, 2]
    started = [e for e in read_jsonl(run / "events.jsonl") if e["event_type"] == "run_started"]
    assert started[-1]["data"]["start_round"] == 2
    assert torch.load(run / "policy.pt", weights_only=True)["round"] == 3


def test_resume_refuses_a_heuristic_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"mode": "heuristic", "config": {}, "run_format": 3}))
    with pytest.raises(ValueError, match="not a ppo run"):
        run_ppo(None, tmp_path, resume=True)


def test_cli_trains_then_evaluates_policy_heuristic_and_random(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "ppo", "--rounds", "1", "--envs", "2", "--episode-length", "3", "--run-dir", str(run), "--quiet",
            "--update-epochs", "1", "--network-kind", "lstm", "--no-target-kl", "--tensorboard"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["ppo"] == {"update_epochs": 1, "target_kl": None} and config["network"] == {"kind": "lstm"}
    assert config["tensorboard"] is True and any((run / "tensorboard").iterdir())
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--policy", str(run / "policy.pt"), "--episodes", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["episode_length"] == 3 and report["seeds"] == [10_000, 10_001]
    for key in ("final_val_accuracy", "host_only_val_accuracy", "params_added", "return", "return_over_host_only"):
        assert set(report[key]) == {"mean", "std"}
    assert "host only val accuracy" in capsys.readouterr().out
    for name in ("heuristic", "random"):
        report = evaluate(name, "digits", episodes=1, episode_length=3)
        assert sum(report["actions_per_episode"].values()) == 2


def test_evaluate_refuses_a_missing_policy_or_zero_episodes(tmp_path):
    with pytest.raises(FileNotFoundError, match="esper train ppo"):
        evaluate(str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="episodes"):
        evaluate("random", episodes=0)


def test_flop_prices_from_the_cli_reach_the_reward_the_logs_and_the_recording(tmp_path):
    run = tmp_path / "run"
    argv = ["train", "ppo", "--rounds", "1", "--envs", "2", "--episode-length", "4", "--run-dir", str(run), "--quiet",
            "--update-epochs", "1", "--flop-price-training", "0.5", "--flop-price-inference", "0.25"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["reward"].keys() == {"flop_price_training", "flop_price_inference", "terminal_reference"}
    assert config["reward"]["flop_price_training"] == 0.5 and config["reward"]["flop_price_inference"] == 0.25
    meta = json.loads((run / "transitions_meta.json").read_text())
    assert meta["reward"]["flop_price_training"] == 0.5 and "training_flops" in meta["reward_components"]
    for row in read_jsonl(run / "transitions.jsonl"):
        parts = row["reward_components"]
        assert parts["training_flops"] <= 0 and sum(parts.values()) == pytest.approx(row["reward"], abs=1e-9)
    metrics = read_jsonl(run / "metrics.jsonl")[0]
    assert {"training_flops", "inference_flops"} <= set(metrics["rewards"]) & set(metrics["rewards_mean_per_step"])
    assert torch.load(run / "policy.pt", weights_only=True)["reward"]["flop_price_inference"] == 0.25


def test_a_run_measures_the_host_alone_as_its_terminal_reference_and_keeps_it(tmp_path, capsys):
    from esper.jobs.ppo import REFERENCE_EPISODES, training_seed
    from esper.runtime import get_task
    from esper.simic.vec_env import MorphogeneticEnv, play
    from esper.tamiyo import NoGrowthController

    run = tmp_path / "run"
    argv = ["train", "ppo", "--rounds", "2", "--envs", "2", "--episode-length", "4", "--run-dir", str(run),
            "--quiet", "--update-epochs", "1", "--checkpoint-every", "1"]  # fmt: skip
    assert main(argv) == 0
    reference = json.loads((run / "config.json").read_text())["config"]["reward"]["terminal_reference"]
    assert json.loads((run / "summary.json").read_text())["terminal_reference"] == reference
    spec = get_task("digits")
    env = MorphogeneticEnv(spec, spec.load_data(), 4)
    seeds = [training_seed(0, 0, k, 2) for k in range(min(2, REFERENCE_EPISODES))]
    assert reference == pytest.approx(sum(play(env, NoGrowthController(), s).final_val_accuracy for s in seeds) / len(seeds))
    assert torch.load(run / "policy.pt", weights_only=True)["reward"]["terminal_reference"] == reference
    # Every terminal step is paid against it: 100 x (the episode's final accuracy - the reference).
    for line in read_jsonl(run / "metrics.jsonl"):
        rows = [r for r in read_jsonl(run / "transitions.jsonl") if r["done"] and r["epoch"] == line["round"]]
        mean_terminal = sum(r["reward_components"]["terminal"] for r in rows) / len(rows)
        assert mean_terminal == pytest.approx(100 * (line["final_val_accuracy"]["mean"] - reference))
    (run / "checkpoints" / "final.pt").unlink()
    (run / "checkpoints" / "epoch_0002.pt").unlink()
    assert main(["train", "ppo", "--resume", str(run)]) == 0
    assert "terminal reference" not in capsys.readouterr().out  # resumed: the saved reference, not measured again
    assert json.loads((run / "summary.json").read_text())["terminal_reference"] == reference


EAGER = {
    "min_epochs_left": 0,
    "germination_cooldown": 1,
    "fossilize_above": -1.0,
    "tracker": {"plateau_patience": 1, "warmup_epochs": 1, "min_delta": 0.1, "stable_loss_change": 10.0},
}
WARM = ["train", "ppo", "--rounds", "1", "--envs", "2", "--episode-length", "6", "--quiet", "--update-epochs", "1"]


@pytest.fixture(scope="module")
def recorded_heuristic(tmp_path_factory):
    """One eager heuristic run on digits, recorded with a terminal reference of 0.9."""
    root = tmp_path_factory.mktemp("recorded")
    config = root / "eager.json"
    config.write_text(json.dumps({"heuristic": EAGER, "reward": {"terminal_reference": 0.9}}))
    run = root / "heuristic"
    assert main(["train", "heuristic", "--task", "digits", "--epochs", "6", "--run-dir", str(run), "--quiet", "--config", str(config)]) == 0
    return run


def test_a_warm_started_run_begins_as_the_recorded_controller(recorded_heuristic, tmp_path, capsys):
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps({"reward": {"terminal_reference": 0.9}}))
    assert main([*WARM, "--run-dir", str(tmp_path / "cold"), "--config", str(reference)]) == 0
    warm = tmp_path / "warm"
    loud = [arg for arg in WARM if arg != "--quiet"]
    assert main([*loud, "--run-dir", str(warm), "--warm-start", str(recorded_heuristic), "--warm-start-updates", "300"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # as printed, but for the console's line wrapping
    assert "terminal reference: the warm-start recordings' (90.00% val accuracy)" in out
    assert "warm start: fitted to 5 recorded steps from 1 run(s); the policy takes the recorded action in 100% of them" in out
    config = json.loads((warm / "config.json").read_text())["config"]
    assert config["reward"]["terminal_reference"] == 0.9 and config["warm_start"] == {"updates": 300}
    summary = json.loads((warm / "summary.json").read_text())
    assert summary["warm_start_from"] == [str(recorded_heuristic)] and summary["warm_start"]["agreement"] == 1.0
    assert torch.load(warm / "policy.pt", weights_only=True)["warm_start_from"] == [str(recorded_heuristic)]
    # Cloned, the policy is decided where a fresh one is near uniform over the valid actions.
    cold_entropy = read_jsonl(tmp_path / "cold" / "metrics.jsonl")[0]["entropy"]
    warm_entropy = read_jsonl(warm / "metrics.jsonl")[0]["entropy"]
    assert cold_entropy > 1.0 and warm_entropy < 0.5 * cold_entropy


@pytest.mark.parametrize(
    ("extra", "reward", "message"),
    [
        (["--task", "mnist5k-mlp"], None, "recorded on task digits, this run trains on mnist5k-mlp"),
        (["--slots", "block2"], None, "recorded with slot_ids ['block2', 'block3'], this run has ['block2']"),
        ([], {"terminal_reference": 0.8}, "terminal_reference: 0.9 recorded, 0.8 asked"),
        (["--network-kind", "lstm"], None, "needs the mlp network"),
    ],
    ids=["other-task", "other-slots", "other-reference", "lstm"],
)
def test_a_warm_start_that_cannot_fit_is_refused_in_one_line(recorded_heuristic, tmp_path, capsys, extra, reward, message):
    if reward is not None:
        config = tmp_path / "reward.json"
        config.write_text(json.dumps({"reward": reward}))
        extra = [*extra, "--config", str(config)]
    run = tmp_path / "run"
    assert main([*WARM, "--run-dir", str(run), "--warm-start", str(recorded_heuristic), *extra]) == 2
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1 and "Traceback" not in out, out
    assert message in " ".join(out.split())
    assert not run.exists(), "a refused run leaves no folder"
