"""Reward components by hand, and the reward ranks degenerate controllers below the heuristic."""

import math

import pytest
from conftest import epoch_signals, seed_report, stage_move

from esper.leyline import (
    Action,
    ActionKind,
    EpochSignals,
    FlopsReport,
    FossilReport,
    SeedStage,
)
from esper.runtime import get_task
from esper.simic.rewards import STAGE_POTENTIAL, RewardConfig, RewardTracker
from esper.simic.vec_env import EVAL_SEED_OFFSET, MorphogeneticEnv, play
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
        slots["a"] = seed_report(stage, epochs_total=epoch, params=params, contribution=contribution, gradient_ratio=0.3)
    seed_params = 0 if stage is None or stage in (SeedStage.CULLED, SeedStage.EMBARGOED) else params
    moves = [] if moved is None else [stage_move(moved, frm=SeedStage.PROBATIONARY, epoch=epoch - 1)]
    return epoch_signals(epoch, train_accuracy=val, val_accuracy=val, seed_params=seed_params, slots=slots,
                         transitions=moves, fossils=fossils)  # fmt: skip


def run(tracker: RewardTracker, sequence: list[EpochSignals]) -> dict[str, float]:
    tracker.reset(sequence[0])
    totals: dict[str, float] = {}
    for i, s in enumerate(sequence[1:], start=1):
        for name, value in tracker.step(s, terminal=i == len(sequence) - 1).items():
            totals[name] = totals.get(name, 0.0) + value
    return totals


def test_a_fossilized_seeds_credit_is_paid_when_shown_and_taken_back_at_the_end():
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
    tracker = RewardTracker(config)
    tracker.reset(life[0])
    steps = [tracker.step(s, terminal=i == len(life) - 1) for i, s in enumerate(life[1:], start=1)]
    assert sum(r["contribution"] for r in steps[:4]) == pytest.approx(config.contribution_weight * 0.03)
    assert steps[4]["contribution"] == 0.0  # nothing new: nothing paid
    assert steps[-1]["contribution"] == pytest.approx(-config.contribution_weight * 0.03)  # a potential: taken back
    totals = run(RewardTracker(config), life)
    assert totals["contribution"] == pytest.approx(0.0) and totals["shaping"] == pytest.approx(0.0)
    assert totals["terminal"] == pytest.approx(config.terminal_weight * (0.6 - 0.5))  # the final accuracy decides
    assert totals["rent"] == 0.0  # no rent by default: FLOP prices are the cost of growth
    assert run(RewardTracker(RewardConfig(gamma=1.0, rent_weight=0.02)), life)["rent"] == pytest.approx(-6 * 0.02 * math.log1p(50 / 500))
    assert totals["total"] == pytest.approx(sum(totals[k] for k in ("contribution", "rent", "shaping", "terminal", "rollback")))


def test_a_seed_the_network_leans_on_earns_nothing_unless_the_network_ends_better():
    """The reward PPO once farmed: a stacked seed's counterfactual contribution grows as the host
    comes to rely on it, whatever the network is worth. Only the final accuracy may pay for it."""
    config = RewardConfig(gamma=1.0, terminal_reference=0.5)

    def life(contribution: float, final: float) -> list[EpochSignals]:
        return [signals(0), signals(1, SeedStage.BLENDING, contribution), signals(2, SeedStage.PROBATIONARY, contribution),
                signals(3, SeedStage.FOSSILIZED, contribution, moved=SeedStage.FOSSILIZED), signals(4, SeedStage.FOSSILIZED, contribution, val=final)]  # fmt: skip

    leaned_on = run(RewardTracker(config), life(contribution=0.4, final=0.49))  # 40 points "contributed", worse network
    helpful = run(RewardTracker(config), life(contribution=0.02, final=0.52))
    nothing = run(RewardTracker(config), [signals(0), signals(1), signals(2), signals(3), signals(4, val=0.5)])
    assert leaned_on["total"] < nothing["total"] < helpful["total"]
    assert helpful["total"] == pytest.approx(config.terminal_weight * 0.02)  # two points over the host alone


def test_the_terminal_term_is_measured_against_the_reference_not_the_first_epoch():
    life = [signals(0, val=0.3), signals(1, val=0.8), signals(2, val=0.9)]
    against_host = run(RewardTracker(RewardConfig(terminal_reference=0.88)), life)
    assert against_host["terminal"] == pytest.approx(100 * 0.02)
    assert run(RewardTracker(), life)["terminal"] == pytest.approx(100 * 0.6)  # no reference: the first epoch's


def test_each_component_is_its_weight_times_its_recorded_quantity():
    config = RewardConfig(flop_price_training=0.5, flop_price_inference=0.25, rent_weight=0.1, terminal_reference=0.4)
    life = [priced(0, 100.0, 4.0), priced(1, 150.0, 5.0, SeedStage.TRAINING), priced(2, 150.0, 5.0, SeedStage.BLENDING)]
    tracker = RewardTracker(config)
    tracker.reset(life[0])
    weights = config.weights()
    for i, s in enumerate(life[1:], start=1):
        components = tracker.step(s, terminal=i == 2)
        assert components.keys() - {"total"} == tracker.quantities.keys()
        for name, quantity in tracker.quantities.items():
            assert components[name] == pytest.approx(weights[name] * quantity)
    assert tracker.quantities["training_flops"] == pytest.approx(50 / (100 * 9))  # measured even where unpriced


def test_each_seed_of_a_stack_is_credited_once_and_counts_in_the_potential():
    config = RewardConfig(gamma=1.0)
    first = FossilReport("a-seed1", "norm", "a", 50, 0.03, epoch=2)
    second = FossilReport("a-seed2", "norm", "a", 50, 0.02, epoch=5)

    def step(epoch, live=None, stack=(), moved=None):
        slots = {"a": None if live is None else seed_report(live, seed_id="a-seed2", epochs_total=epoch, params=50,
                                                            contribution=0.02, gradient_ratio=0.3)}  # fmt: skip
        moves = [] if moved is None else [stage_move(SeedStage.FOSSILIZED, frm=SeedStage.PROBATIONARY, seed_id=moved, epoch=epoch - 1)]
        params = 50 * (len(stack) + (live is not None))
        return epoch_signals(epoch, seed_params=params, slots=slots, transitions=moves, fossils={"a": list(stack)})

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


def test_in_real_episodes_only_the_final_accuracy_and_the_flops_decide_the_return():
    """Whatever a controller does, its potentials (contribution, shaping) sum to nothing: its return
    against doing nothing on the same seed is the final accuracy it gained, less the FLOPs it cost."""
    spec = get_task("digits")
    blueprints = ["conv_light", "conv_heavy"]  # FlopCounterMode counts convolutions: a norm seed costs no FLOPs
    eager = HeuristicConfig(tracker=TrackerConfig(plateau_patience=1, warmup_epochs=1, min_delta=0.1, stable_loss_change=10.0),
                            min_epochs_left=0, germination_cooldown=1, fossilize_above=-1.0)  # fmt: skip
    controllers = {
        "heuristic": lambda: HeuristicController(BlueprintRotation(blueprints), eager),
        "cull everything": lambda: GrowEverywhere(blueprints, cull=True),
        "germinate and never decide": lambda: GrowEverywhere(blueprints, cull=False),
    }
    reward = RewardConfig(gamma=1.0, flop_price_training=0.5, flop_price_inference=0.5, terminal_reference=0.9)
    env = MorphogeneticEnv(spec, spec.load_data(), episode_length=8, reward=reward)
    nothing = play(env, NoGrowthController(), EVAL_SEED_OFFSET).to_dict()
    assert nothing["return"] == pytest.approx(100 * (nothing["final_val_accuracy"] - 0.9))
    for name, make in controllers.items():
        row = play(env, make(), EVAL_SEED_OFFSET).to_dict()
        rewards = row["rewards"]
        assert row["seeds"]["germinated"] > 0, name
        assert rewards["contribution"] == pytest.approx(0.0, abs=1e-9) and rewards["shaping"] == pytest.approx(0.0, abs=1e-9)
        assert rewards["training_flops"] < 0, name  # growth trained something: it was paid for
        gained = 100 * (row["final_val_accuracy"] - nothing["final_val_accuracy"])
        costs = rewards["training_flops"] + rewards["inference_flops"] + rewards["rollback"]
        assert row["return"] - nothing["return"] == pytest.approx(gained + costs, abs=1e-6), name


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
        with pytest.raises(ValueError, match="flop_price_inference must be (>= 0|a finite number)"):
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
