"""compare.json's arithmetic on known inputs: means, SEs, paired differences, reach, targets."""

from __future__ import annotations

import math

import pytest

from esper.jobs.compare_results import ArmRun, compare_results, flops_to_reach, mean_se


def _run(seed: int, accuracy: list[float], training: float, *, loss: list[float] | None = None,
         params: int = 1000, per_epoch: float | None = None) -> ArmRun:  # fmt: skip
    """A finished arm run whose epochs each cost the same training FLOPs (unless given)."""
    step = training / len(accuracy) if per_epoch is None else per_epoch
    return ArmRun(
        seed=seed,
        path=f"seed-{seed}/arm",
        val_accuracy=accuracy,
        val_loss=loss or [1.0 - a for a in accuracy],
        cumulative_training_flops=[step * (i + 1) for i in range(len(accuracy))],
        params=params,
        inference_flops=2.0 * params,
        flops={"training": training, "validation": training / 10, "counterfactual": 0.0},
    )


@pytest.fixture()
def arms() -> dict[str, list[ArmRun]]:
    return {
        "host-only": [_run(s, [0.80, a], 40.0) for s, a in enumerate([0.90, 0.91, 0.92])],
        "grown": [
            _run(0, [0.50, 0.961, 0.95], 50.0, params=1500),
            _run(1, [0.60, 0.90, 0.97], 60.0, params=1600),
            _run(2, [0.70, 0.95, 0.96], 70.0, params=1700),
        ],
        "static-final": [_run(s, [0.9, a], 100.0, params=1600) for s, a in enumerate([0.96, 0.96, 0.99])],
        "static-final-matched": [_run(s, [0.95], 60.0, params=1600) for s in range(3)],
    }


def test_mean_se_uses_the_sample_standard_deviation() -> None:
    assert mean_se([1.0, 2.0, 3.0]) == {"mean": 2.0, "se": pytest.approx(1 / math.sqrt(3)), "n": 3}
    assert mean_se([0.5]) == {"mean": 0.5, "se": None, "n": 1}
    assert mean_se([None, None]) == {"mean": None, "se": None, "n": 0}
    assert mean_se([4.0, None, 4.0]) == {"mean": 4.0, "se": 0.0, "n": 2}


def test_flops_to_reach_is_the_first_epoch_at_or_over_the_threshold() -> None:
    run = _run(0, [0.5, 0.961, 0.95, 0.99], 40.0)
    assert flops_to_reach(run, 0.96) == 20.0
    assert flops_to_reach(run, 0.99) == 40.0
    assert flops_to_reach(run, 0.995) is None


def test_per_arm_statistics(arms) -> None:
    results = compare_results(arms, with_loss=False)
    grown = results["arms"]["grown"]
    assert grown["seeds"] == [0, 1, 2] and grown["runs"]["1"] == "seed-1/arm"
    assert grown["final_val_accuracy"]["mean"] == pytest.approx(0.96)
    assert grown["final_val_accuracy"]["se"] == pytest.approx(0.01 / math.sqrt(3))
    assert grown["best_val_accuracy"]["mean"] == pytest.approx((0.961 + 0.97 + 0.96) / 3)
    assert grown["params"]["mean"] == pytest.approx(1600)
    assert grown["inference_flops_per_sample"]["mean"] == pytest.approx(3200)
    assert grown["training_flops"]["mean"] == pytest.approx(60.0)
    assert grown["validation_flops"]["mean"] == pytest.approx(6.0)
    assert "final_val_loss" not in grown
    assert grown["per_seed"]["2"]["final_val_accuracy"] == 0.96


def test_reach_threshold_is_99_percent_of_static_finals_mean(arms) -> None:
    results = compare_results(arms, with_loss=False)
    threshold = 0.99 * 0.97
    assert results["reach"]["threshold"] == pytest.approx(threshold)  # 0.9603
    reach = results["arms"]["grown"]["training_flops_to_reach"]
    # Seed 0 reaches it at epoch 1 (2/3 of 50 FLOPs), seed 1 at epoch 2 (60), seed 2 never
    # (0.96 < 0.9603).
    assert reach["n"] == 2 and reach["never_reached"] == 1
    assert reach["mean"] == pytest.approx((100 / 3 + 60) / 2)
    assert results["arms"]["grown"]["per_seed"]["2"]["training_flops_to_reach"] is None
    assert results["arms"]["host-only"]["training_flops_to_reach"]["never_reached"] == 3


def test_paired_differences_and_the_flops_fraction(arms) -> None:
    results = compare_results(arms, with_loss=True)
    over_host = results["differences"]["grown - host-only"]["final_val_accuracy"]
    assert over_host["mean"] == pytest.approx(0.05) and over_host["se"] == pytest.approx(0.01 / math.sqrt(3))
    over_final = results["differences"]["grown - static-final"]["final_val_accuracy"]
    assert over_final["mean"] == pytest.approx(-0.01) and over_final["se"] == pytest.approx(0.02 / math.sqrt(3))
    loss = results["differences"]["grown - static-final"]["final_val_loss"]
    assert loss["mean"] == pytest.approx(0.01)
    fraction = results["grown_training_flops_over_static_final"]
    assert fraction["mean"] == pytest.approx(0.6) and fraction["se"] == pytest.approx(0.1 / math.sqrt(3))
    assert results["arms"]["grown"]["final_val_loss"]["mean"] == pytest.approx(0.04)
    assert results["arms"]["grown"]["best_val_loss"]["mean"] == pytest.approx(1 - (0.961 + 0.97 + 0.96) / 3)


def test_targets_are_judged_on_the_paired_numbers(arms) -> None:
    over_host, over_matched, over_final = compare_results(arms, with_loss=False)["targets"]
    assert over_host["met"] is True  # +0.05 >= 3 x 0.0058
    assert over_matched["met"] is True  # 0.96 vs 0.95
    assert over_final["met"] is True and over_final["aim_met"] is False  # -0.010 >= -0.0115; 60% of FLOPs
    arms["host-only"] = [_run(s, [0.80, a], 40.0) for s, a in enumerate([0.95, 0.91, 0.92])]
    assert compare_results(arms, with_loss=False)["targets"][0]["met"] is False  # +0.0367 ± 0.0233


def test_missing_arms_leave_their_numbers_out(arms) -> None:
    results = compare_results({"host-only": arms["host-only"], "grown": arms["grown"][:1]}, with_loss=False)
    assert results["reach"]["threshold"] is None
    assert "training_flops_to_reach" not in results["arms"]["grown"]
    assert list(results["differences"]) == ["grown - host-only"]
    (over_host,) = results["targets"]  # the static arms were not planned: their targets are not listed
    assert over_host["difference"]["n"] == 1 and over_host["met"] is None  # one seed: no SE
    planned = compare_results({**arms, "static-final": [], "static-final-matched": []}, with_loss=False)
    _, over_matched, over_final = planned["targets"]  # planned, not finished yet: listed, not judged
    assert over_matched["met"] is None and over_final["met"] is None
    assert results["grown_training_flops_over_static_final"] is None


def test_a_policy_arm_is_judged_against_the_heuristics_grown_arm(arms) -> None:
    # Grown finals 0.95, 0.97, 0.96 at 50, 60, 70 FLOPs.
    cheaper = {**arms, "policy": [_run(s, [0.9, a], t) for s, a, t in ((0, 0.95, 35.0), (1, 0.97, 48.0), (2, 0.96, 49.0))]}
    results = compare_results(cheaper, with_loss=False)
    over = results["differences"]["policy - grown"]["final_val_accuracy"]
    assert over["mean"] == pytest.approx(0.0) and over["n"] == 3
    assert results["policy_training_flops_over_grown"]["mean"] == pytest.approx((0.7 + 0.8 + 0.7) / 3)
    better, as_good_for_less = results["targets"][3:]
    assert better["met"] is False and as_good_for_less["met"] is True  # 73% of the FLOPs, same accuracy

    costlier = {**arms, "policy": [_run(s, [0.9, a], t) for s, a, t in ((0, 0.97, 50.0), (1, 0.99, 61.0), (2, 0.98, 70.0))]}
    better, as_good_for_less = compare_results(costlier, with_loss=False)["targets"][3:]
    assert as_good_for_less["met"] is False  # two points better, but not for less
    assert better["met"] is False  # and 61 > 60 FLOPs on one seed puts the mean ratio over 1
    assert len(compare_results(arms, with_loss=False)["targets"]) == 3  # no policy arm: no policy targets


def test_a_policy_is_judged_against_the_better_of_the_heuristic_and_the_schedule(arms) -> None:
    # Grown finals 0.95, 0.97, 0.96 at 50, 60, 70 FLOPs; the plan ends a point higher for 100.
    scheduled = [_run(s, [0.9, a], 100.0) for s, a in ((0, 0.96), (1, 0.98), (2, 0.97))]
    policy = [_run(s, [0.9, a], 75.0) for s, a in ((0, 0.965), (1, 0.975), (2, 0.97))]
    results = compare_results({**arms, "scheduled": scheduled, "policy": policy}, with_loss=False)
    better, as_good_for_less = (t for t in results["targets"] if t["target"].startswith("policy"))
    assert better["rival"] == as_good_for_less["rival"] == "scheduled"
    assert as_good_for_less["difference"]["mean"] == pytest.approx(0.0)
    assert results["policy_training_flops_over_scheduled"]["mean"] == pytest.approx(0.75)
    assert as_good_for_less["met"] is True and better["met"] is False  # within 1 SE at 75% of its FLOPs
    assert results["differences"]["policy - grown"]["final_val_accuracy"]["mean"] == pytest.approx(0.01)
    (transferred,) = (t for t in compare_results({**arms, "scheduled": scheduled, "policy": policy}, with_loss=False,
                                                  transfer=True)["targets"] if t["target"].startswith("policy"))  # fmt: skip
    assert transferred["rival"] == "scheduled" and transferred["met"] is True  # as good within 1 SE, FLOPs aside


def test_growth_is_judged_against_the_reference_on_its_flops_and_on_its_final_metric(arms) -> None:
    reference = [_run(s, [0.90, 0.96], 200.0, params=5000) for s in range(3)]
    matched = [_run(s, [0.93], 60.0, params=5000) for s in range(3)]
    scheduled = [_run(s, [0.90, a], 80.0, params=1800) for s, a in enumerate([0.955, 0.96, 0.97])]
    results = compare_results(
        {**arms, "scheduled": scheduled, "static-reference": reference, "static-reference-matched": matched},
        with_loss=False,
        reach_fractions=(0.5, 0.3),
    )
    # "Training FLOPs to reach" is now measured against the reference's final (99% of 0.96).
    assert results["reach"]["of_arm"] == "static-reference"
    assert results["reach"]["threshold"] == pytest.approx(0.99 * 0.96)
    beats, grown_reach, scheduled_reach = [t for t in results["targets"] if "static-reference" in t["target"]]
    assert beats["difference"]["mean"] == pytest.approx(0.96 - 0.93) and beats["met"] is True
    assert grown_reach["training_flops_fraction"]["mean"] == pytest.approx(0.3)  # 60 of 200 on average
    assert grown_reach["difference"]["mean"] == pytest.approx(0.0)
    assert grown_reach["met"] is True and grown_reach["aim_met"] is True  # "at most 30%": 30% is in
    assert scheduled_reach["training_flops_fraction"]["mean"] == pytest.approx(0.4)
    assert scheduled_reach["met"] is True and scheduled_reach["aim_met"] is False


def test_a_language_model_is_judged_against_the_reference_on_loss(arms) -> None:
    lm = {arm: [_run(r.seed, r.val_accuracy, r.flops["training"], loss=[2.0, 1.5]) for r in runs] for arm, runs in arms.items()}
    worse = [_run(s, [0.9, 0.95], 60.0, loss=[2.0, 1.6 + 0.01 * s]) for s in range(3)]
    results = compare_results({**lm, "static-reference-matched": worse}, with_loss=True)
    [beats] = [t for t in results["targets"] if "static-reference-matched" in t["target"]]
    assert beats["metric"] == "final_val_loss" and "val loss" in beats["target"]
    assert beats["difference"]["mean"] == pytest.approx(-0.11)  # lower loss than the reference: better
    assert beats["met"] is True
