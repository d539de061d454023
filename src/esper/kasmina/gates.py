"""Quality gates G0..G5: the checks a seed must pass to enter each stage."""

from __future__ import annotations

from esper.kasmina.state import SeedState
from esper.leyline import GateLevel, GateResult, SeedStage


class QualityGates:
    """The checks a seed must pass to enter each stage (G0..G5)."""

    def __init__(
        self,
        min_training_improvement: float = 0.0,
        max_isolation_violations: int = 0,
        min_training_epochs: int = 2,
        min_seed_gradient_ratio: float = 0.05,
        min_blend_alpha: float = 0.95,
        min_shadowing_epochs: int = 1,
        min_contribution: float = 0.0,
    ) -> None:
        self.min_training_improvement = min_training_improvement
        self.max_isolation_violations = max_isolation_violations
        self.min_training_epochs = min_training_epochs
        self.min_seed_gradient_ratio = min_seed_gradient_ratio
        self.min_blend_alpha = min_blend_alpha
        self.min_shadowing_epochs = min_shadowing_epochs
        self.min_contribution = min_contribution

    def check_gate(self, state: SeedState, target_stage: SeedStage) -> GateResult:
        match target_stage:
            case SeedStage.GERMINATED:
                return self._check_g0(state)
            case SeedStage.TRAINING:
                return self._check_g1(state)
            case SeedStage.BLENDING:
                return self._check_g2(state)
            case SeedStage.SHADOWING:
                return self._check_g3(state)
            case SeedStage.PROBATIONARY:
                return self._check_g4(state)
            case SeedStage.FOSSILIZED:
                return self._check_g5(state)
            case _:
                return GateResult(gate=None, passed=True, score=1.0, message=f"no gate guards {target_stage.name}")

    @staticmethod
    def _result(gate: GateLevel, checks: list[tuple[bool, str]]) -> GateResult:
        passed = [name for ok, name in checks if ok]
        failed = [name for ok, name in checks if not ok]
        verdict = "passed" if not failed else "failed: " + ", ".join(failed)
        return GateResult(
            gate=gate,
            passed=not failed,
            score=len(passed) / len(checks),
            checks_passed=passed,
            checks_failed=failed,
            message=f"{gate.name} {verdict}",
        )

    def _check_g0(self, state: SeedState) -> GateResult:
        return self._result(
            GateLevel.G0,
            [
                (bool(state.seed_id), "seed_id_present" if state.seed_id else "seed_id_missing"),
                (
                    bool(state.blueprint_id),
                    "blueprint_id_present" if state.blueprint_id else "blueprint_id_missing",
                ),
                _shape_check(state.probe_shapes),
            ],
        )

    def _check_g1(self, state: SeedState) -> GateResult:
        done = state.stage == SeedStage.GERMINATED
        return self._result(
            GateLevel.G1, [(done, "germinated" if done else f"not_germinated (stage {state.stage.name})")]
        )

    def _check_g2(self, state: SeedState) -> GateResult:
        m = state.metrics
        improvement = m.improvement_since_stage_start
        ratio = m.seed_gradient_norm_ratio
        return self._result(
            GateLevel.G2,
            [
                (
                    improvement >= self.min_training_improvement,
                    f"improvement {improvement:+.4f} vs min {self.min_training_improvement:+.4f}",
                ),
                (
                    m.isolation_violations <= self.max_isolation_violations,
                    f"isolation_violations {m.isolation_violations} vs max {self.max_isolation_violations}",
                ),
                (
                    m.epochs_in_current_stage >= self.min_training_epochs,
                    f"training_epochs {m.epochs_in_current_stage} vs min {self.min_training_epochs}",
                ),
                (
                    ratio >= self.min_seed_gradient_ratio,
                    (
                        f"seed_gradient_ok {ratio:.4f}"
                        if ratio >= self.min_seed_gradient_ratio
                        else f"seed_gradient_low {ratio:.4f} < {self.min_seed_gradient_ratio}"
                    ),
                ),
            ],
        )

    def _check_g3(self, state: SeedState) -> GateResult:
        alpha = state.alpha
        return self._result(
            GateLevel.G3,
            [
                (
                    alpha >= self.min_blend_alpha,
                    f"alpha {alpha:.3f} vs min {self.min_blend_alpha} (ramp {state.blending_progress:.0%} done)",
                )
            ],
        )

    def _check_g4(self, state: SeedState) -> GateResult:
        m = state.metrics
        return self._result(
            GateLevel.G4,
            [
                (
                    m.epochs_in_current_stage >= self.min_shadowing_epochs,
                    f"shadowing_epochs {m.epochs_in_current_stage} vs min {self.min_shadowing_epochs}",
                ),
                (
                    m.counterfactual_contribution is not None,
                    "counterfactual_measured"
                    if m.counterfactual_contribution is not None
                    else "counterfactual_missing",
                ),
            ],
        )

    def _check_g5(self, state: SeedState) -> GateResult:
        contribution = state.metrics.counterfactual_contribution
        measured = contribution is not None
        return self._result(
            GateLevel.G5,
            [
                (measured, "counterfactual_measured" if measured else "counterfactual_missing"),
                (
                    measured and contribution > self.min_contribution,
                    (
                        f"contribution {contribution if measured else float('nan'):+.4f} "
                        f"vs min {self.min_contribution:+.4f}"
                    ),
                ),
                (state.is_healthy, "healthy" if state.is_healthy else "unhealthy"),
            ],
        )


def _shape_check(probe_shapes: tuple[tuple[int, ...], tuple[int, ...]] | None) -> tuple[bool, str]:
    """G0's shape check: the seed gave a probe back in the shape it was fed."""
    if probe_shapes is None:
        return False, "shape_unprobed"
    given, returned = probe_shapes
    if given != returned:
        return False, f"shape_changed {given} -> {returned} (a seed must preserve its input shape)"
    return True, "shape_preserved"
