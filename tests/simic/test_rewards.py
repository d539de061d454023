"""Reward components by hand, and the reward ranks degenerate controllers below the heuristic."""

import math

import pytest

from esper.jobs.evaluate import play
from esper.jobs.heuristic import resolve_blueprints
from esper.leyline import (
    Action,
    ActionKind,
    EpochSignals,
    FlopsReport,
    FossilReport,
    SeedReport,
    SeedStage,
    StageTransition,
)
from esper.runtime import get_task
from esper.simic.rewards import STAGE_POTENTIAL, RewardConfig, RewardTracker
from esper.simic.vec_env import EVAL_SEED_OFFSET, MorphogeneticEnv
from esper.tamiyo import (
    BlueprintRotation,
    HeuristicConfig,
    HeuristicController,
    NoGrowthController,
    TrackerConfig,
)


def signals(epoch: int, stage: SeedStage | None = None, contribution: float | None = None, val: float = 0.5, params: int = 50,
            moved: SeedStage | None = None) -> EpochSignals:  # fmt: skip
    """Slot a's seed in `stage` (a FOSSILIZED one sits in the slot's stack, as the trainer reports
    it), with the move to `moved` since the last signals."""
    slots = {"a": None}
    fossils = {"a": []}
    if stage == SeedStage.FOSSILIZED:
        fossils["a"] = [FossilReport("a-seed1", "norm", "a", params, contribution, epoch=3)]
    elif stage is not None:
        slots["a"] = SeedReport("a-seed1", "norm", "a", stage, epoch, params, 1.0, contribution, 0.3, True)
    seed_params = 0 if stage is None or stage in (SeedStage.CULLED, SeedStage.EMBARGOED) else params
    moves = [] if moved is None else [StageTransition("a", "a-seed1", "norm", SeedStage.PROBATIONARY, moved, "", epoch - 1)]
    return EpochSignals(epoch, 10, 1.0, val, 1.0, val, 500, seed_params, slots, transitions=moves, fossils=fossils)


def run(tracker: RewardTracker, sequence: list[EpochSignals]) -> dict[str, float]:
    tracker.reset(sequence[0])
    totals: dict[str, float] = {}
    for i, s in enumerate(sequence[1:], start=1):
        for name, value in tracker.step(s, terminal=i == len(sequence) - 1).items():
            totals[name] = totals.get(name, 0.0) + value
    return totals


def test_a_fossilized_seed_is_credited_its_contribution_once():
    config = RewardConfig(gamma=1.0)
    life = [
        signals(0),
        signals(1, SeedStage.TRAINING),
        signals(2, SeedStage.BLENDING, 0.01),
        signals(3, SeedStage.PROBATIONARY, 0.03),
        signals(4, SeedStage.FOSSILIZED, 0.03, moved=SeedStage.FOSSILIZED),  # credited at its move
        signals(5, SeedStage.FOSSILIZED, 0.03),  # still in the stack: not paid again
        signals(6, SeedStage.FOSSILIZED, 0.03, val=0.6),
    ]
    totals = run(RewardTracker(config), life)
    assert totals["contribution"] == pytest.approx(config.contribution_weight * 0.03)
    assert totals["shaping"] == pytest.approx(0.0)  # gamma 1: the potential telescopes to Phi(end) = 0
    assert totals["terminal"] == pytest.approx(config.terminal_weight * (0.6 - 0.5))
    assert totals["rent"] == pytest.approx(-6 * config.rent_weight * math.log1p(50 / 500))
    assert totals["total"] == pytest.approx(sum(totals[k] for k in ("contribution", "rent", "shaping", "terminal", "rollback")))


def test_each_seed_of_a_stack_is_credited_once_and_counts_in_the_potential():
    config = RewardConfig(gamma=1.0)
    first = FossilReport("a-seed1", "norm", "a", 50, 0.03, epoch=2)
    second = FossilReport("a-seed2", "norm", "a", 50, 0.02, epoch=5)

    def step(epoch, live=None, stack=(), moved=None):
        slots = {"a": None if live is None else SeedReport("a-seed2", "norm", "a", live, epoch, 50, 1.0, 0.02, 0.3, True)}
        moves = [] if moved is None else [StageTransition("a", moved, "norm", SeedStage.PROBATIONARY, SeedStage.FOSSILIZED, "", epoch - 1)]
        params = 50 * (len(stack) + (live is not None))
        return EpochSignals(epoch, 10, 1.0, 0.5, 1.0, 0.5, 500, params, slots, transitions=moves, fossils={"a": list(stack)})

    life = [
        step(0),
        step(3, stack=[first], moved="a-seed1"),
        step(4, live=SeedStage.PROBATIONARY, stack=[first]),  # the slot took a second seed
        step(5, stack=[first, second], moved="a-seed2"),
        step(6, stack=[first, second]),
    ]
    tracker = RewardTracker(config)
    tracker.reset(life[0])
    rewards = [tracker.step(s, terminal=False) for s in life[1:]]
    assert sum(r["contribution"] for r in rewards) == pytest.approx(config.contribution_weight * (0.03 + 0.02))
    assert rewards[-1]["contribution"] == 0.0  # nothing new: nothing paid
    fossil = STAGE_POTENTIAL[SeedStage.FOSSILIZED]
    assert rewards[0]["shaping"] == pytest.approx(fossil)  # the potential counts the stack
    assert rewards[2]["shaping"] == pytest.approx(fossil - STAGE_POTENTIAL[SeedStage.PROBATIONARY])


def test_culled_and_undecided_seeds_give_their_credit_back():
    config = RewardConfig(gamma=1.0)
    culled = [signals(0), signals(1, SeedStage.BLENDING, 0.04), signals(2, SeedStage.SHADOWING, 0.04), signals(3, SeedStage.CULLED), signals(4)]
    undecided = [signals(0), signals(1, SeedStage.BLENDING, 0.04), signals(2, SeedStage.PROBATIONARY, 0.04)]
    for life in (culled, undecided):
        tracker = RewardTracker(config)
        tracker.reset(life[0])
        first = tracker.step(life[1], terminal=False)
        assert first["contribution"] == pytest.approx(config.contribution_weight * config.blended_credit * 0.04)
        assert first["shaping"] == pytest.approx(STAGE_POTENTIAL[SeedStage.BLENDING])
        assert run(RewardTracker(config), life)["contribution"] == pytest.approx(0.0)


def test_doing_nothing_earns_only_the_terminal_term():
    totals = run(RewardTracker(), [signals(0, val=0.3), signals(1, val=0.4), signals(2, val=0.45)])
    assert totals["contribution"] == totals["rent"] == totals["shaping"] == totals["rollback"] == 0.0
    assert totals["total"] == pytest.approx(RewardConfig().terminal_weight * 0.15)


def test_a_rollback_is_penalised():
    rolled = signals(1)
    rolled.rolled_back = True
    tracker = RewardTracker()
    tracker.reset(signals(0))
    assert tracker.step(rolled, terminal=False)["rollback"] == -RewardConfig().rollback_penalty


class GrowEverywhere:
    """Germinates in every free slot; `cull` decides whether live seeds are culled at once."""

    def __init__(self, blueprints: list[str], cull: bool) -> None:
        self.rotation = BlueprintRotation(blueprints)
        self.cull = cull

    def decide(self, s: EpochSignals) -> list[Action]:
        actions = []
        for slot_id, report in s.slots.items():
            if report is None:
                actions.append(Action(ActionKind.GERMINATE, slot_id, self.rotation.select_blueprint()))
            elif self.cull and report.stage in (SeedStage.GERMINATED, SeedStage.TRAINING):
                actions.append(Action(ActionKind.CULL, slot_id))
        return actions

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.mark.slow
def test_degenerate_controllers_earn_less_than_the_heuristic_for_the_right_reasons():
    spec = get_task("digits")
    data = spec.load_data()
    blueprints = resolve_blueprints(spec, None)
    quick = HeuristicConfig(tracker=TrackerConfig(plateau_patience=1, warmup_epochs=1), min_epochs_left=10)
    controllers = {
        "heuristic": lambda: HeuristicController(BlueprintRotation(blueprints), quick),
        "do nothing": NoGrowthController,
        "cull everything": lambda: GrowEverywhere(blueprints, cull=True),
        "germinate and never decide": lambda: GrowEverywhere(blueprints, cull=False),
    }
    seeds = [EVAL_SEED_OFFSET + i for i in range(4)]
    env = MorphogeneticEnv(spec, data, episode_length=24)
    results = {name: [play(env, make(), seed).to_dict() for seed in seeds] for name, make in controllers.items()}
    mean = {name: sum(r["return"] for r in rows) / len(rows) for name, rows in results.items()}
    for name in ("do nothing", "cull everything", "germinate and never decide"):
        assert mean[name] < mean["heuristic"], (name, mean)
    # ... and for the right reasons: only fossilized seeds keep credit, growth pays rent.
    assert sum(r["rewards"]["contribution"] for r in results["heuristic"]) > 0
    for name in ("do nothing", "cull everything", "germinate and never decide"):
        for row in results[name]:
            assert row["seeds"]["fossilized"] == 0
            assert row["rewards"]["contribution"] == pytest.approx(0.0, abs=1e-9)
    assert all(r["rewards"]["rent"] == 0.0 for r in results["do nothing"])
    for name in ("cull everything", "germinate and never decide"):
        assert all(r["rewards"]["rent"] < 0 for r in results[name])


def priced(epoch: int, training: float, inference: float, stage: SeedStage | None = None) -> EpochSignals:
    """`signals` with the epoch's FLOPs as the trainer reports them."""
    s = signals(epoch, stage)
    s.flops = FlopsReport(training=training, cumulative_training=training * (epoch + 1), inference_per_sample=inference)
    return s


def test_flop_prices_charge_extra_training_compute_and_added_inference_cost():
    config = RewardConfig(flop_price_training=0.5, flop_price_inference=0.25)
    # 10 epochs: the host alone costs 100 per epoch and 4 per sample; a seed from epoch 2 to 5
    # costs 50 more per epoch and 1 more per sample, then is culled; a second one from epoch 7 stays.
    life = [priced(0, 100.0, 4.0), priced(1, 100.0, 4.0)]
    life += [priced(e, 150.0, 5.0, SeedStage.TRAINING) for e in range(2, 6)]
    life += [priced(6, 100.0, 4.0, SeedStage.CULLED)]
    life += [priced(e, 120.0, 4.4, SeedStage.BLENDING) for e in range(7, 10)]
    tracker = RewardTracker(config)
    tracker.reset(life[0])
    steps = [tracker.step(s, terminal=i == 9) for i, s in enumerate(life[1:], start=1)]
    extra_training = (4 * 50 + 3 * 20) / (100 * 9)  # over the 9 decision steps' host compute
    assert sum(r["training_flops"] for r in steps) == pytest.approx(-0.5 * extra_training)
    assert steps[0]["training_flops"] == 0.0  # nothing grown, nothing charged
    inference = [r["inference_flops"] for r in steps]
    assert inference[1] == pytest.approx(-0.25 * 0.25)  # the seed adds a quarter of the host's cost
    assert inference[5] == pytest.approx(0.25 * 0.25)  # culled: its cost is given back
    assert inference[6] == pytest.approx(-0.25 * 0.1)
    assert sum(inference) == pytest.approx(-0.25 * 0.1)  # what the final network costs over the host
    for r in steps:
        assert r["total"] == pytest.approx(sum(v for k, v in r.items() if k != "total"))


def test_without_prices_the_reward_is_unchanged_by_flops():
    life = [priced(0, 100.0, 4.0), priced(1, 300.0, 9.0, SeedStage.TRAINING), priced(2, 300.0, 9.0, SeedStage.TRAINING)]
    unpriced = [signals(0), signals(1, SeedStage.TRAINING), signals(2, SeedStage.TRAINING)]
    with_flops, without = run(RewardTracker(), life), run(RewardTracker(), unpriced)
    assert with_flops["training_flops"] == with_flops["inference_flops"] == 0.0
    assert with_flops == without


def test_a_priced_reward_needs_counted_flops_and_sane_prices():
    with pytest.raises(ValueError, match="does not count them"):
        RewardTracker(RewardConfig(flop_price_training=0.1)).reset(signals(0))
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="flop_price_inference must be a finite number >= 0"):
            RewardConfig(flop_price_inference=bad)


def test_the_environment_prices_the_flops_its_trainer_counts():
    spec = get_task("digits")
    data = spec.load_data()
    length = 6
    env = MorphogeneticEnv(spec, data, episode_length=length, reward=RewardConfig(flop_price_training=1.0, flop_price_inference=1.0))
    host = env.reset(EVAL_SEED_OFFSET).flops
    actions = [[Action(ActionKind.GERMINATE, spec.slots[0], "conv_heavy")]] + [[]] * (length - 2)
    rewards, last = [], None
    for step in actions:
        last, reward, _ = env.step(step)
        rewards.append(reward)
    # Summed over the episode, each price is paid on the trainer's own count, against the host's.
    spent = last.flops.cumulative_training - host.training
    extra = (spent - (length - 1) * host.training) / (host.training * (length - 1))
    assert extra > 0 and sum(r["training_flops"] for r in rewards) == pytest.approx(-extra)
    added = (last.flops.inference_per_sample - host.inference_per_sample) / host.inference_per_sample
    assert sum(r["inference_flops"] for r in rewards) == pytest.approx(-added)
