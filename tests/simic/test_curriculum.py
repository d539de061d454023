import math

import numpy as np
import pytest

from esper.simic.curriculum import UNEXPLORED_BONUS, BlueprintCurriculum


def make() -> BlueprintCurriculum:
    # Deliberately not sorted by complexity, so list order and complexity order differ.
    return BlueprintCurriculum(["attention", "conv", "norm", "mlp"], [8.0, 4.0, 1.0, 2.0])


def test_unexplored_blueprints_tried_simplest_first():
    c = make()
    order = []
    for _ in range(4):
        name = c.select_blueprint()
        order.append(name)
        c.record_outcome(name, success=False, reward=0.0)
    assert order == ["norm", "mlp", "conv", "attention"]


def test_unexplored_score_is_bonus_minus_penalty():
    c = make()
    scores = c.get_ucb_scores()
    assert list(scores) == ["attention", "conv", "norm", "mlp"]
    assert scores["norm"] == UNEXPLORED_BONUS
    assert scores["attention"] == pytest.approx(UNEXPLORED_BONUS - 0.1)
    assert scores["conv"] == pytest.approx(UNEXPLORED_BONUS - 0.1 * 3 / 7)


def test_explored_score_matches_ucb1_formula():
    c = BlueprintCurriculum(["a", "b"], [1, 3], exploration_weight=2.0, complexity_penalty=0.5)
    c.record_outcome("a", True, 1.0)
    c.record_outcome("a", False, 0.0)
    c.record_outcome("b", True, 0.9)
    scores = c.get_ucb_scores()
    assert scores["a"] == pytest.approx(0.5 + 2.0 * math.sqrt(math.log(3) / 2))
    assert scores["b"] == pytest.approx(0.9 + 2.0 * math.sqrt(math.log(3) / 1) - 0.5)


def test_equal_complexity_ties_broken_by_list_order():
    c = BlueprintCurriculum(["x", "y", "z"], [5, 5, 5])
    assert set(c.get_ucb_scores().values()) == {UNEXPLORED_BONUS}
    assert c.select_blueprint() == "x"


def test_bandit_converges_to_best_arm():
    rng = np.random.default_rng(0)
    names = ["a", "b", "c", "d"]
    true_means = {"a": 0.2, "b": 0.8, "c": 0.4, "d": 0.3}
    c = BlueprintCurriculum(names, [1, 2, 3, 4], exploration_weight=0.5)
    for _ in range(300):
        name = c.select_blueprint()
        reward = true_means[name] + rng.normal(0.0, 0.1)
        c.record_outcome(name, success=reward > 0.5, reward=reward)
    trials = {n: c.get_stats(n)["trials"] for n in names}
    assert max(trials, key=trials.get) == "b"
    assert trials["b"] > 0.7 * 300
    assert sum(trials.values()) == 300


def test_stats():
    c = make()
    assert c.get_stats("conv") == {"trials": 0, "successes": 0, "mean_reward": 0.0}
    c.record_outcome("conv", True, 1.0)
    c.record_outcome("conv", False, -0.5)
    c.record_outcome("conv", True, 2.0)
    stats = c.get_stats("conv")
    assert stats["trials"] == 3
    assert stats["successes"] == 2
    assert stats["mean_reward"] == pytest.approx(2.5 / 3)


@pytest.mark.parametrize(
    "blueprints, complexity, match",
    [
        ([], [], "non-empty"),
        (["a", "b"], [1.0], "1 entries but there are 2"),
        (["a", "a"], [1.0, 2.0], "unique"),
        (["a", "b"], [1.0, float("nan")], "finite"),
    ],
)
def test_bad_construction_raises(blueprints, complexity, match):
    with pytest.raises(ValueError, match=match):
        BlueprintCurriculum(blueprints, complexity)


def test_unknown_blueprint_raises():
    c = make()
    with pytest.raises(ValueError, match="unknown blueprint 'nope'"):
        c.record_outcome("nope", True, 1.0)
    with pytest.raises(ValueError, match="unknown blueprint"):
        c.get_stats("nope")
    with pytest.raises(ValueError, match="finite"):
        c.record_outcome("conv", True, float("nan"))


def test_save_load_round_trip(tmp_path):
    c = BlueprintCurriculum(["a", "b", "c"], [3, 1, 2], exploration_weight=1.5,
                            complexity_penalty=0.2)
    rng = np.random.default_rng(1)
    for _ in range(20):
        name = c.select_blueprint()
        c.record_outcome(name, bool(rng.random() > 0.5), float(rng.normal()))

    path = tmp_path / "curriculum.json"
    c.save(path)
    restored = BlueprintCurriculum.load(path)
    assert restored.get_ucb_scores() == c.get_ucb_scores()
    assert restored.state_dict() == c.state_dict()
    assert restored.select_blueprint() == c.select_blueprint()
    for name in ["a", "b", "c"]:
        assert restored.get_stats(name) == c.get_stats(name)


def test_from_state_dict_rejects_inconsistent_state():
    state = make().state_dict()
    state["trials"] = [1, 2]
    with pytest.raises(ValueError, match="'trials' has 2 entries, expected 4"):
        BlueprintCurriculum.from_state_dict(state)
    del state["trials"]
    with pytest.raises(ValueError, match="missing keys"):
        BlueprintCurriculum.from_state_dict(state)


def test_load_state_dict_takes_over_in_place_and_checks_blueprints() -> None:
    source = BlueprintCurriculum(["a", "b"], [1.0, 2.0])
    source.record_outcome("b", success=True, reward=3.0)
    target = BlueprintCurriculum(["a", "b"], [1.0, 2.0])
    target.load_state_dict(source.state_dict())
    assert target.get_ucb_scores() == source.get_ucb_scores()
    with pytest.raises(ValueError, match="blueprints"):
        BlueprintCurriculum(["a", "c"], [1.0, 2.0]).load_state_dict(source.state_dict())
