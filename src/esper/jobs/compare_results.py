"""compare.json: what `esper compare`'s arms reached, at what size and for how much compute.

Every number is read from the arms' own run folders (metrics.jsonl's per-epoch `flops`,
summary.json's `params` and `flops`), so compare.json can always be rebuilt from them.
Statistics are over seeds: mean ± standard error (sample standard deviation / sqrt(n);
None with fewer than two seeds). Differences between arms are paired by seed: each seed
trains every arm on the same data order, so the seed's own luck cancels out of
`grown - host-only` and the like, and a target's "k SE" is the SE of that paired
difference.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esper.nissa import read_jsonl
from esper.nissa.run_folder import RunFolder, read_json

ARMS = ("host-only", "grown", "policy", "scheduled", "static-final", "static-final-matched",
        "static-reference", "static-reference-matched")  # fmt: skip
PAIRS = (("grown", "host-only"), ("grown", "static-final-matched"), ("grown", "static-final"),
         ("policy", "host-only"), ("policy", "grown"), ("policy", "scheduled"),
         ("scheduled", "host-only"), ("scheduled", "grown"),
         ("grown", "static-reference-matched"), ("grown", "static-reference"),
         ("scheduled", "static-reference"), ("policy", "static-reference"))  # fmt: skip
# The arms that grow the host, judged against the task's static reference (issue 20's targets).
GROWING_ARMS = ("grown", "scheduled")
REFERENCE_WIN_SE = 2.0  # grown beats the reference trained on its FLOPs by at least this many SE
# A learned controller's targets against the better of the heuristic (`grown`) and the fixed plan
# (`scheduled`), whichever of them the compare trains (paired by seed).
POLICY_RIVALS = {"grown": "the heuristic's grown network", "scheduled": "the scheduled arm"}
POLICY_WIN_SE = 2.0  # better final metric by at least this many SE, at no more training FLOPs
POLICY_FLOPS_FRACTION = 0.8  # or the same metric (within 1 SE) for at most this share of the FLOPs
REACH_FRACTION = 0.99  # "training FLOPs to first reach 99% of static-final's final metric"
FLOPS_KEYS = ("training", "validation", "counterfactual")


@dataclass(frozen=True, slots=True)
class ArmRun:
    """One finished arm run on one seed, as compare reads it from its run folder."""

    seed: int
    path: str  # relative to the compare folder
    val_accuracy: list[float]
    val_loss: list[float]
    cumulative_training_flops: list[float]  # after each epoch
    params: int
    inference_flops: float  # per sample, of the final network
    flops: dict[str, float]  # the run's totals: training, validation, counterfactual

    @classmethod
    def read(cls, run_dir: Path, seed: int, path: str) -> ArmRun:
        """From a finished run folder's metrics.jsonl and summary.json."""
        folder = RunFolder(run_dir)
        summary, metrics = read_json(folder.summary_path), read_jsonl(folder.metrics_path)
        return cls(
            seed=seed,
            path=path,
            val_accuracy=[m["val_accuracy"] for m in metrics],
            val_loss=[m["val_loss"] for m in metrics],
            cumulative_training_flops=[m["flops"]["cumulative_training"] for m in metrics],
            params=summary["params"]["total"],
            inference_flops=summary["flops"]["inference_per_sample"],
            flops={key: summary["flops"][key] for key in FLOPS_KEYS},
        )


def mean_se(values: Iterable[float | None]) -> dict[str, Any]:
    """{"mean", "se", "n"} of the values that are not None (mean None when none is left)."""
    kept = [float(v) for v in values if v is not None]
    n = len(kept)
    if n == 0:
        return {"mean": None, "se": None, "n": 0}
    mean = sum(kept) / n
    if n == 1:
        return {"mean": mean, "se": None, "n": 1}
    variance = sum((v - mean) ** 2 for v in kept) / (n - 1)
    return {"mean": mean, "se": math.sqrt(variance / n), "n": n}


def flops_to_reach(run: ArmRun, threshold: float) -> float | None:
    """Cumulative training FLOPs at the first epoch whose val accuracy reached `threshold`."""
    for accuracy, flops in zip(run.val_accuracy, run.cumulative_training_flops, strict=True):
        if accuracy >= threshold:
            return flops
    return None


def _measures(run: ArmRun, with_loss: bool) -> dict[str, float]:
    measures = {
        "final_val_accuracy": run.val_accuracy[-1],
        "best_val_accuracy": max(run.val_accuracy),
    }
    if with_loss:
        measures |= {"final_val_loss": run.val_loss[-1], "best_val_loss": min(run.val_loss)}
    measures |= {
        "params": float(run.params),
        "inference_flops_per_sample": run.inference_flops,
        **{f"{key}_flops": run.flops[key] for key in FLOPS_KEYS},
    }
    return measures


def _arm_section(runs: Sequence[ArmRun], with_loss: bool, threshold: float | None) -> dict[str, Any]:
    per_seed = {run.seed: _measures(run, with_loss) for run in runs}
    section: dict[str, Any] = {
        "seeds": [run.seed for run in runs],
        "runs": {str(run.seed): run.path for run in runs},
    }
    for key in next(iter(per_seed.values()), {}):
        section[key] = mean_se(m[key] for m in per_seed.values())
    if threshold is not None:
        reached = {run.seed: flops_to_reach(run, threshold) for run in runs}
        section["training_flops_to_reach"] = {
            **mean_se(reached.values()),
            "never_reached": sum(v is None for v in reached.values()),
        }
        for seed, flops in reached.items():
            per_seed[seed]["training_flops_to_reach"] = flops
    section["per_seed"] = {str(seed): measures for seed, measures in per_seed.items()}
    return section


def _paired(a: Sequence[ArmRun], b: Sequence[ArmRun], measure: Any) -> dict[str, Any]:
    """mean ± SE over the seeds both arms finished of measure(run_a) - measure(run_b)."""
    by_seed = {run.seed: run for run in b}
    return mean_se(measure(run) - measure(by_seed[run.seed]) for run in a if run.seed in by_seed)


def _differences(arms: Mapping[str, Sequence[ArmRun]], with_loss: bool) -> dict[str, Any]:
    measures = {"final_val_accuracy": lambda r: r.val_accuracy[-1]}
    if with_loss:
        measures["final_val_loss"] = lambda r: r.val_loss[-1]
    return {
        f"{a} - {b}": {name: _paired(arms[a], arms[b], fn) for name, fn in measures.items()}
        for a, b in PAIRS
        if arms.get(a) and arms.get(b)
    }


def _flops_fraction(arms: Mapping[str, Sequence[ArmRun]], arm: str = "grown", of: str = "static-final") -> dict[str, Any] | None:
    """`arm`'s training FLOPs over `of`'s, per seed, then mean ± SE."""
    runs, others = arms.get(arm), arms.get(of)
    if not runs or not others:
        return None
    by_seed = {run.seed: run.flops["training"] for run in others}
    return mean_se(
        run.flops["training"] / by_seed[run.seed] for run in runs if run.seed in by_seed
    )


def _targets(differences: Mapping[str, Any], fraction: Mapping[str, Any] | None,
             policy_fractions: Mapping[str, Mapping[str, Any] | None], planned: Collection[str],
             transfer: bool) -> list[dict[str, Any]]:  # fmt: skip
    """Issue 11's targets (and issue 22's, with a policy arm), those whose arms are `planned`,
    each with the numbers it is judged on; `met` is None while an arm has no finished runs or
    there are too few seeds to have an SE. A transferred policy (trained on another task) has
    one target instead of two: as good as its rival within 1 SE, whatever it spends."""

    def diff(name: str) -> dict[str, Any]:
        return differences.get(name, {}).get("final_val_accuracy", mean_se([]))

    over_host, over_matched, over_final = (diff(f"{a} - {b}") for a, b in PAIRS[:3])
    mean, se = over_host["mean"], over_host["se"]
    beats_host = {
        "target": "grown beats host-only by at least 3 SE (final val accuracy, paired)",
        "difference": over_host,
        "met": None if mean is None or se is None else mean > 0 and mean >= 3 * se,
    }
    matches_matched = {
        "target": "grown is at least as good as static-final-matched (equal training FLOPs)",
        "difference": over_matched,
        "met": None if over_matched["mean"] is None else over_matched["mean"] >= 0,
    }
    mean, se = over_final["mean"], over_final["se"]
    ratio = None if fraction is None else fraction["mean"]
    within = None if mean is None or se is None else mean >= -se
    reaches_final = {
        "target": "grown reaches static-final's final val accuracy within 1 SE with at most 75% "
                  "of its training FLOPs (aim: 50%)",
        "difference": over_final,
        "training_flops_fraction": fraction,
        "met": None if within is None or ratio is None else within and ratio <= 0.75,
        "aim_met": None if within is None or ratio is None else within and ratio <= 0.5,
    }  # fmt: skip
    targets = [target for pair, target in zip(PAIRS[:3], (beats_host, matches_matched, reaches_final), strict=True)
               if set(pair) <= set(planned)]  # fmt: skip
    rivals = [arm for arm in POLICY_RIVALS if arm in planned]
    if "policy" in planned and rivals:
        # The better rival is the one the policy's paired difference is lowest against.
        judged = [arm for arm in rivals if diff(f"policy - {arm}")["mean"] is not None]
        rival = min(judged, key=lambda arm: diff(f"policy - {arm}")["mean"]) if judged else rivals[0]
        targets += _policy_targets(rival, rivals, diff(f"policy - {rival}"), policy_fractions.get(rival), transfer)
    return targets


def _reference_targets(
    differences: Mapping[str, Any],
    fractions: Mapping[str, Mapping[str, Any] | None],
    planned: Collection[str],
    with_loss: bool,
    reach_fractions: tuple[float, float],
) -> list[dict[str, Any]]:
    """Issue 20's targets: the big network's quality for less compute. Judged on the final val
    loss for char LMs (lower is better), else on the final val accuracy."""
    metric, sign = ("final_val_loss", -1.0) if with_loss else ("final_val_accuracy", 1.0)
    label = "val loss" if with_loss else "val accuracy"
    targets = []
    if {"grown", "static-reference-matched"} <= set(planned):
        over = differences.get("grown - static-reference-matched", {}).get(metric, mean_se([]))
        mean, se = over["mean"], over["se"]
        targets.append({
            "target": f"grown beats static-reference-matched (the reference on its training FLOPs) by "
                      f"at least {REFERENCE_WIN_SE:g} SE (final {label}, paired)",
            "metric": metric,
            "difference": over,
            "met": None if mean is None or se is None else sign * mean > 0 and abs(mean) >= REFERENCE_WIN_SE * se,
        })  # fmt: skip
    target, aim = reach_fractions
    for arm in GROWING_ARMS:
        if not {arm, "static-reference"} <= set(planned):
            continue
        over = differences.get(f"{arm} - static-reference", {}).get(metric, mean_se([]))
        mean, se = over["mean"], over["se"]
        fraction = fractions.get(arm)
        ratio = None if fraction is None else fraction["mean"]
        within = None if mean is None or se is None else sign * mean >= -se
        known = within is not None and ratio is not None
        targets.append({
            "target": f"{arm} reaches static-reference's final {label} within 1 SE with at most "
                      f"{target:.0%} of its training FLOPs (moonshot {aim:.0%})",
            "metric": metric,
            "difference": over,
            "training_flops_fraction": fraction,
            "met": within and ratio <= target if known else None,
            "aim": aim,
            "aim_met": within and ratio <= aim if known else None,
        })  # fmt: skip
    return targets


def _policy_targets(rival: str, rivals: Sequence[str], over: dict[str, Any],
                    fraction: Mapping[str, Any] | None, transfer: bool) -> list[dict[str, Any]]:  # fmt: skip
    """The learned controller against its better rival: better at no more compute, or as good for
    less; transferred from another task, as good."""
    mean, se = over["mean"], over["se"]
    ratio = None if fraction is None else fraction["mean"]
    known = mean is not None and se is not None and ratio is not None
    against = POLICY_RIVALS[rival] if len(rivals) == 1 else f"the better of {' and '.join(rivals)} ({rival})"
    if transfer:
        return [{
            "target": f"policy, trained on another task, is at least as good as {against} within 1 SE "
                      "(final val accuracy, paired)",
            "rival": rival,
            "difference": over,
            "training_flops_fraction": fraction,
            "met": mean >= -se if known else None,
        }]  # fmt: skip
    return [
        {
            "target": f"policy beats {against} by at least {POLICY_WIN_SE:g} SE "
                      "(final val accuracy, paired) with no more training FLOPs",
            "rival": rival,
            "difference": over,
            "training_flops_fraction": fraction,
            "met": mean > 0 and mean >= POLICY_WIN_SE * se and ratio <= 1.0 if known else None,
        },
        {
            "target": f"policy reaches the final val accuracy of {against} within 1 SE with at most "
                      f"{POLICY_FLOPS_FRACTION:.0%} of its training FLOPs",
            "rival": rival,
            "difference": over,
            "training_flops_fraction": fraction,
            "met": mean >= -se and ratio <= POLICY_FLOPS_FRACTION if known else None,
        },
    ]  # fmt: skip


def compare_results(
    arms: Mapping[str, Sequence[ArmRun]], with_loss: bool, reach_fractions: tuple[float, float] = (0.5, 0.3),
    transfer: bool = False,
) -> dict[str, Any]:
    """compare.json's results from the finished runs of each planned arm (an arm may have none yet);
    the targets are those whose arms are planned.

    `with_loss` adds val loss (final and best = lowest) beside val accuracy: the char-LM
    tasks' second metric. "Training FLOPs to reach" is measured against the static reference's
    final val accuracy where the compare trains it, else against static-final's.
    `reach_fractions` are the task's (target, moonshot) shares of the reference's training
    FLOPs for reaching its final metric (`TaskSpec.reach_fractions`). `transfer`: the policy arm
    is a policy trained on another task (`esper compare --transfer`).
    """
    goal = "static-reference" if arms.get("static-reference") else "static-final"
    reference = mean_se(run.val_accuracy[-1] for run in arms.get(goal) or [])["mean"]
    threshold = None if reference is None else REACH_FRACTION * reference
    present = {arm: runs for arm, runs in arms.items() if runs}
    differences = _differences(present, with_loss)
    fraction = _flops_fraction(present)
    policy_fractions = {arm: _flops_fraction(present, "policy", arm) for arm in POLICY_RIVALS}
    over_reference = {arm: _flops_fraction(present, arm, "static-reference") for arm in GROWING_ARMS}
    return {
        "reach": {
            "metric": "val_accuracy",
            "of_arm": goal,
            "fraction_of_its_final": REACH_FRACTION,
            "threshold": threshold,
        },
        "arms": {arm: _arm_section(runs, with_loss, threshold) for arm, runs in present.items()},
        "differences": differences,
        "grown_training_flops_over_static_final": fraction,
        **{f"policy_training_flops_over_{arm}": f for arm, f in policy_fractions.items() if f is not None},
        **{f"{arm}_training_flops_over_static_reference": f for arm, f in over_reference.items() if f is not None},
        "targets": _targets(differences, fraction, policy_fractions, planned=list(arms), transfer=transfer)
        + _reference_targets(differences, over_reference, list(arms), with_loss, reach_fractions),
    }
