"""Recorded transitions: one format from the heuristic job, PPO and `esper evaluate --record`."""

from __future__ import annotations

import dataclasses
import json
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from conftest import epoch_signals, seed_report, stage_move

from esper.jobs.config import HeuristicRunConfig
from esper.jobs.evaluate import evaluate
from esper.jobs.heuristic import run_heuristic
from esper.jobs.ppo import PPORunConfig, run_ppo
from esper.leyline import (
    WAIT,
    Action,
    ActionKind,
    EpochSignals,
    SeedReport,
    SeedStage,
    StageTransition,
)
from esper.nissa import read_jsonl
from esper.nissa.files import RunFormatError
from esper.simic.actions import ActionSpace
from esper.simic.features import FeatureLayout
from esper.simic.recording import (
    META_FILE,
    TRANSITIONS_FILE,
    TransitionLog,
    episode_recorder,
    step_outcomes,
    transitions_meta,
)
from esper.simic.rewards import COMPONENTS, RewardConfig
from esper.tolaria import MorphogeneticTrainer

EAGER = {
    "min_epochs_left": 0,
    "germination_cooldown": 1,
    "fossilize_above": -1.0,
    "tracker": {"plateau_patience": 1, "warmup_epochs": 1, "min_delta": 0.1, "stable_loss_change": 10.0},
}


def _check_rows(run_dir: Path, rows_per_episode: int) -> list[dict]:
    """Shapes, masks allowing the action, and each episode's steps chained next_obs -> obs."""
    meta = json.loads((run_dir / META_FILE).read_text())
    rows = read_jsonl(run_dir / TRANSITIONS_FILE)
    n_obs, n_actions = len(meta["feature_names"]), len(meta["action_names"])
    assert n_obs == FeatureLayout(tuple(meta["slot_ids"]), tuple(meta["blueprints"])).size
    # The shaping discount is spelled out: offline learning must use it (or drop the shaping).
    assert meta["shaping_gamma"] == meta["reward"]["gamma"] and meta["reward_components"] == list(COMPONENTS)
    episodes: dict = {}
    for row in rows:
        assert list(row["reward_components"]) == list(COMPONENTS)
        assert sum(row["reward_components"].values()) == pytest.approx(row["reward"], abs=1e-12)
        assert len(row["obs"]) == len(row["next_obs"]) == n_obs
        assert len(row["mask"]) == len(row["next_mask"]) == n_actions
        assert row["mask"][row["action"]], "the recorded action must be one the mask allowed"
        assert set(row["outcomes"]) <= {"fossilized", "culled", "rollback"}
        episodes.setdefault(row["episode"], []).append(row)
    for steps in episodes.values():
        assert len(steps) == rows_per_episode
        assert [r["t"] for r in steps] == list(range(rows_per_episode))
        assert [r["done"] for r in steps] == [False] * (rows_per_episode - 1) + [True]
        for before, after in pairwise(steps):
            assert before["next_obs"] == after["obs"] and before["next_mask"] == after["mask"]
    return rows


def test_evaluate_record_writes_rewards_equal_to_the_environment_return(tmp_path: Path) -> None:
    report = evaluate("random", "digits", episodes=2, episode_length=5, record=tmp_path / "rec")
    rows = _check_rows(tmp_path / "rec", rows_per_episode=4)
    for episode in report["per_episode"]:
        recorded = sum(r["reward"] for r in rows if r["episode"] == episode["seed"])
        assert recorded == pytest.approx(episode["return"], abs=1e-9)  # the env's own RewardTracker
    meta = json.loads((tmp_path / "rec" / META_FILE).read_text())
    assert meta["mode"] == "evaluate" and meta["episode_length"] == 5 and meta["task"] == "digits"
    with pytest.raises(FileExistsError, match="already holds"):
        evaluate("random", "digits", episodes=1, episode_length=3, record=tmp_path / "rec")


def test_ppo_records_every_environment_of_every_round(tmp_path: Path) -> None:
    run_ppo(PPORunConfig(rounds=2, envs=2, episode_length=3, checkpoint_every=1), tmp_path / "ppo")
    rows = _check_rows(tmp_path / "ppo", rows_per_episode=2)
    assert len(rows) == 2 * 2 * 2
    assert sorted({r["epoch"] for r in rows}) == [0, 1]  # the round: what --resume truncates by
    assert json.loads((tmp_path / "ppo" / META_FILE).read_text())["mode"] == "ppo"


def _heuristic(seed: int = 0) -> HeuristicRunConfig:
    return HeuristicRunConfig(task="digits", epochs=9, seed=seed, checkpoint_every=2, heuristic=EAGER)


def test_heuristic_resume_truncates_and_rewrites_transitions(tmp_path: Path, monkeypatch) -> None:
    run_heuristic(_heuristic(), tmp_path / "full")
    full = _check_rows(tmp_path / "full", rows_per_episode=8)
    assert any(r["action"] != 0 for r in full), "the eager heuristic should act"

    real_end_epoch = MorphogeneticTrainer.end_epoch

    def crash_after_seven(self):  # the last checkpoint is epoch 6: lines for epochs 6 and 7 must go
        real_end_epoch(self)
        if self.epoch == 7:
            raise KeyboardInterrupt

    monkeypatch.setattr(MorphogeneticTrainer, "end_epoch", crash_after_seven)
    with pytest.raises(KeyboardInterrupt):
        run_heuristic(_heuristic(), tmp_path / "cut")
    monkeypatch.setattr(MorphogeneticTrainer, "end_epoch", real_end_epoch)
    assert max(r["epoch"] for r in read_jsonl(tmp_path / "cut" / TRANSITIONS_FILE)) == 6
    run_heuristic(None, tmp_path / "cut", resume=True)
    assert read_jsonl(tmp_path / "cut" / TRANSITIONS_FILE) == full


def test_heuristic_and_ppo_runs_with_one_reference_are_learned_from_together_and_reweighed(tmp_path: Path) -> None:
    from esper.simic.recorded import load_transitions

    reward = {"flop_price_training": 0.5, "flop_price_inference": 0.5, "terminal_reference": 0.9}
    conv = ["conv_light"]  # FlopCounterMode counts matmuls and convolutions: a norm seed costs no FLOPs
    run_heuristic(dataclasses.replace(_heuristic(), epochs=6, reward=reward, blueprints=conv), tmp_path / "heuristic")
    rows = _check_rows(tmp_path / "heuristic", rows_per_episode=5)
    assert any(r["reward_components"]["training_flops"] < 0 for r in rows), "the eager heuristic grows: it pays"
    run_ppo(PPORunConfig(rounds=1, envs=2, episode_length=6, reward=reward, blueprints=conv), tmp_path / "ppo")
    both = load_transitions([tmp_path / "heuristic", tmp_path / "ppo"])
    assert len(both) == 5 + 2 * 5 and both.meta["reward"]["flop_price_training"] == 0.5 and not both.mixed_weights
    # Re-weighed under the weights they were recorded with, the quantities give back the recorded rewards.
    assert torch.allclose(both.reweighed(RewardConfig(**both.meta["reward"])), both.columns["reward"], atol=1e-5)

    # Recorded unpriced: learnable with the priced runs, re-weighed to the first run's prices.
    unpriced = tmp_path / "unpriced"
    run_heuristic(dataclasses.replace(_heuristic(), epochs=6, blueprints=conv, reward={"terminal_reference": 0.9}), unpriced)
    mixed = load_transitions([tmp_path / "heuristic", unpriced])
    assert mixed.mixed_weights
    assert torch.allclose(mixed.reweighed(RewardConfig(**mixed.meta["reward"]))[:5], both.columns["reward"][:5], atol=1e-5)
    repriced = mixed.reweighed(RewardConfig(**mixed.meta["reward"]))[5:]
    assert (repriced < mixed.columns["reward"][5:] - 1e-6).any(), "the unpriced run's growth is priced when re-weighed"

    # Another reference changes the quantities themselves: not mixed.
    other = tmp_path / "other-reference"
    run_heuristic(dataclasses.replace(_heuristic(), epochs=3, blueprints=conv), other)
    with pytest.raises(ValueError, match="terminal_reference"):
        load_transitions([other, tmp_path / "ppo"])
    with pytest.raises(ValueError, match="reward.flop_price_training' must be >= 0"):
        run_heuristic(dataclasses.replace(_heuristic(), reward={"flop_price_training": -1.0}), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def _report(stage: SeedStage, seed_id: str = "s1") -> SeedReport:
    return seed_report(stage, seed_id=seed_id, contribution=0.01)


def _signals(epoch: int, slot: SeedReport | None, rolled_back: bool = False, moves=()) -> EpochSignals:
    return epoch_signals(epoch, slots={"a": slot}, rolled_back=rolled_back, transitions=list(moves))


def _move(frm: SeedStage, to: SeedStage) -> StageTransition:
    return stage_move(to, frm=frm, seed_id="s1", epoch=1)


def test_step_outcomes_name_the_rare_events() -> None:
    S = SeedStage
    fossilized = _signals(1, _report(S.FOSSILIZED), moves=[_move(S.PROBATIONARY, S.FOSSILIZED)])
    assert step_outcomes(fossilized) == ["fossilized"]
    # Culled and already through the embargo: the moves still say what happened.
    reset = [_move(S.BLENDING, S.CULLED), _move(S.CULLED, S.EMBARGOED)]
    assert step_outcomes(_signals(1, None, moves=reset)) == ["culled"]
    assert step_outcomes(_signals(1, _report(S.SHADOWING), moves=[_move(S.BLENDING, S.SHADOWING)])) == []
    culled_in_rollback = _signals(1, _report(S.CULLED), rolled_back=True, moves=[_move(S.TRAINING, S.CULLED)])
    assert step_outcomes(culled_in_rollback) == ["culled", "rollback"]


def test_recorder_refuses_several_actions_in_one_step(tmp_path: Path) -> None:
    recorder = episode_recorder(tmp_path, "digits", ["a"], ["norm"], RewardConfig())
    recorder.start(0)
    recorder.record(_signals(0, None), [WAIT])
    germinate = Action(ActionKind.GERMINATE, "a", "norm")
    with pytest.raises(ValueError, match="one action per step"):
        recorder.record(_signals(1, None), [germinate, germinate])
    assert len(ActionSpace(["a"], ["norm"])) == len(read_jsonl(tmp_path / TRANSITIONS_FILE)[0]["mask"])


def test_a_log_resumes_under_another_release_of_its_format_and_refuses_another_format(tmp_path: Path) -> None:
    layout = FeatureLayout(("a",), ("norm",))
    space = ActionSpace(layout.slot_ids, layout.blueprints)
    meta = transitions_meta("digits", layout, space, RewardConfig(), mode="heuristic")
    (tmp_path / META_FILE).write_text(json.dumps({**meta, "esper_version": "0.0.1"}))
    TransitionLog(tmp_path, meta).close()  # the same format: what it records has the same meaning
    other = transitions_meta("digits", layout, space, RewardConfig(gamma=0.9), mode="heuristic")
    with pytest.raises(FileExistsError, match=r"\(differing: reward, shaping_gamma\); record into another folder"):
        TransitionLog(tmp_path, other)
    older = {k: v for k, v in meta.items() if k != "run_format"}
    (tmp_path / META_FILE).write_text(json.dumps(older))
    with pytest.raises(RunFormatError, match=r"in run-file format 1; this Esper .* reads format 3 only"):
        TransitionLog(tmp_path, meta)
