"""A seed slot: one place in the host where a seed is planted, trained, blended and judged.

`SeedState` and `SeedMetrics` (state.py) are the seed's record; `QualityGates`
(gates.py) decide whether it may enter its next stage; `SeedSlot` is the
`nn.Module` that holds the seed and applies it to the host's features according
to the stage. All four are importable from here, as the public API promises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from esper.kasmina.blueprints import BlueprintRegistry
from esper.kasmina.blueprints.registry import feature_shape
from esper.kasmina.gates import QualityGates
from esper.kasmina.isolation import (
    AlphaSchedule,
    GradientIsolationMonitor,
    blend_with_isolation,
    ste_forward,
)
from esper.kasmina.state import SeedMetrics, SeedState
from esper.kasmina.width import Merge, WidthReport, WidthSeed, WidthSite, widen_fresh
from esper.leyline import (
    ACTIVE_STAGES,
    FAILURE_STAGES,
    NEXT_STAGE,
    OUTCOME_EVENTS,
    SEED_RUNS_STAGES,
    VALID_TRANSITIONS,
    FossilReport,
    GateResult,
    SeedReport,
    SeedStage,
    StageTransition,
    TaskConfig,
    TelemetryEvent,
    TelemetryEventType,
)

__all__ = ["QualityGates", "SeedMetrics", "SeedSlot", "SeedState"]


class _SlotState(SeedState):
    """A `SeedState` whose `alpha` and `stage` are wired to the owning slot.

    `alpha`: under `torch.compile` a Python float read in `forward` is guarded on
    its value, so every alpha step of the blending ramp would recompile. The
    slot's forward therefore reads alpha from a 0-dim buffer, and this setter
    keeps that buffer in sync with every way of setting alpha: `set_alpha`, the
    schedule, and direct assignment (`slot.state.alpha = 0.7`), which the API
    promises the next forward honours, compiled or eager.

    `stage`: direct assignment (`slot.state.stage = SeedStage.TRAINING`, which the
    API promises works) is a lifecycle move like any other: the slot checks it is
    a legal transition (else `ValueError`), records it in the history and its
    transition list, and runs its side effects (alpha, isolation, the seed's
    removal on a cull). `transition` itself, which the slot calls, writes the field.

    Until the slot adopts the state (while the dataclass `__init__` runs, or when
    a checkpoint is loaded) both are plain fields.
    """

    __slots__ = ("_on_alpha", "_on_stage")

    @property
    def alpha(self) -> float:
        return _ALPHA_FIELD.__get__(self)

    @alpha.setter
    def alpha(self, value: float) -> None:
        _ALPHA_FIELD.__set__(self, value)
        on_alpha = getattr(self, "_on_alpha", None)  # unset while the dataclass __init__ runs
        if on_alpha is not None:
            on_alpha()

    @property
    def stage(self) -> SeedStage:
        return _STAGE_FIELD.__get__(self)

    @stage.setter
    def stage(self, value: SeedStage) -> None:
        on_stage = getattr(self, "_on_stage", None)
        if on_stage is None:
            _STAGE_FIELD.__set__(self, value)
        else:
            on_stage(self, SeedStage(value))

    def transition(self, stage: SeedStage) -> bool:
        on_stage = getattr(self, "_on_stage", None)
        self._on_stage = None  # the move itself writes the field
        try:
            return SeedState.transition(self, stage)
        finally:
            self._on_stage = on_stage

    def _detach(self) -> None:
        """The slot let go of this seed: from now on a plain record."""
        self._on_alpha = self._on_stage = None

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        """Copying a model with a live seed (`copy.deepcopy`, `grown.export()`): the fields are
        written as data, and the wiring to the copied slot last, so no write is taken for a
        lifecycle move of a slot that is itself still being copied."""
        _, fields = state
        wiring = {name: fields.pop(name, None) for name in ("_on_alpha", "_on_stage")}
        _ALPHA_FIELD.__set__(self, fields.pop("alpha"))
        _STAGE_FIELD.__set__(self, fields.pop("stage"))
        for name, value in fields.items():
            setattr(self, name, value)
        self._on_alpha, self._on_stage = wiring["_on_alpha"], wiring["_on_stage"]


_ALPHA_FIELD = SeedState.__dict__["alpha"]  # the dataclass's slot descriptors
_STAGE_FIELD = SeedState.__dict__["stage"]


class SeedSlot(nn.Module):
    """Holds a stack of fossils and at most one live seed at an injection point, and runs
    the live seed's lifecycle.

    Growth has no ceiling: a seed that is fossilized joins the slot's stack
    (`fossils`, an `nn.ModuleList`, with a `FossilReport` each in `fossil_reports`)
    and the slot is free again at once (`state` None, `stage` DORMANT), so it can
    take another seed, which then sits on top of the fossils. The forward pass
    applies the fossils in order, then the live seed as its stage says. Fossils are
    part of the host from then on: `force_alpha` (the counterfactual) removes only
    the live seed, and the trainer optimises them with the host.

    `state`, `alpha` and `isolate_gradients` are read on every forward pass, so code
    may set them directly (`slot.state.stage = SeedStage.TRAINING`) and the next
    forward honours them; a stage set that way is a lifecycle move (`_SlotState`).

    Every move is appended to `transitions` (a `StageTransition` each), whether
    telemetry is on or not (`fast_mode`); the trainer drains the list each epoch.

    Compile-friendliness: stage, `isolate_gradients` and `force_alpha(0.0)` choose
    the branch taken (a change may recompile: a handful per seed lifetime), while
    the blending alpha is read from the 0-dim buffer `_alpha`, so an alpha step
    never recompiles. The buffer always holds the effective alpha (`self.alpha`,
    clamped); `_SlotState` and `force_alpha` keep it in sync.
    """

    def __init__(
        self,
        slot_id: str,
        channels: int,
        device: str | torch.device = "cpu",
        gates: QualityGates | None = None,
        on_telemetry: Callable[[TelemetryEvent], None] | None = None,
        fast_mode: bool = False,
        task_config: TaskConfig | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.slot_id = slot_id
        self.channels = channels
        self.gates = gates or QualityGates()
        self.on_telemetry = on_telemetry
        self.fast_mode = fast_mode
        self._explicit_config = task_config is not None
        self.task_config = task_config or TaskConfig()
        self.state: SeedState | None = None
        self.seed: nn.Module | None = None
        self.isolate_gradients = True
        self.epoch = 0
        self.seeds_planted = 0
        self.seed_topology = self.task_config.topology
        self.isolation_monitor = GradientIsolationMonitor()
        self._alpha_override: float | None = None
        self._alpha_schedule: AlphaSchedule | None = None
        self._probe_cache: dict[str, Tensor] = {}
        self.transitions: list[StageTransition] = []
        # The stack: fossilized seeds, applied in order before the live seed.
        self.fossils = nn.ModuleList()
        self.fossil_reports: list[FossilReport] = []
        # Fossilized width seeds are merged into the host's layers, not stacked: their records
        # (a checkpoint re-applies them), and the merges the optimisers have yet to follow.
        self.widenings: list[WidthReport] = []
        self.pending_merges: list[Merge] = []
        # The layer a width seed here widens, where the slot itself names it (`esper.graft`'s
        # `widen`); None: the host names it (`width.site_of`).
        self.width_site: WidthSite | None = None
        # Called with the features entering the live seed (after the fossils) on each forward,
        # while `recording_seed_input` is active: where a counterfactual resumes from.
        self._seed_input_sink: Callable[[Tensor], object] | None = None
        # Effective alpha as a tensor the (compiled) forward reads; not checkpointed: it is
        # derived from the lifecycle state.
        self.register_buffer("_alpha", torch.zeros((), device=device), persistent=False)
        # Follows the module across .to(device) and .to(dtype): seeds are built on the device
        # and in the dtype of the features at the slot (a bf16 host gets bf16 seeds), and the
        # shape-probe cache is keyed on both.
        self.register_buffer(
            "_device_anchor", torch.empty(0, device=device, dtype=dtype), persistent=False
        )

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    @device.setter
    def device(self, value: str | torch.device) -> None:
        """Move the slot (and its seed) to `value`; the shape-probe cache survives a no-op move."""
        target = torch.device(value)
        if target == self.device:
            return
        self.to(target)
        self._probe_cache.clear()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the features at this slot, and so of the seeds planted in it."""
        return self._device_anchor.dtype

    @property
    def alpha(self) -> float:
        if self._alpha_override is not None:
            return self._alpha_override
        return self.state.alpha if self.state is not None else 0.0

    @property
    def stage(self) -> SeedStage:
        return self.state.stage if self.state is not None else SeedStage.DORMANT

    @property
    def seed_acts_in_stage(self) -> bool:
        """The live seed changes the stage before the slot, not the features after it: a width
        seed whose units are inside the stage (a transformer layer's MLP units or heads)."""
        return isinstance(self.seed, WidthSeed) and not self.seed.site.at_slot

    @property
    def stack_depth(self) -> int:
        """How many fossilized seeds the slot's stack holds."""
        return len(self.fossils)

    # ------------------------------------------------------------------ forward
    def forward(self, host_features: Tensor) -> Tensor:
        for fossil in self.fossils:  # part of the host: always at full strength
            host_features = fossil(host_features)
        if self._seed_input_sink is not None:
            self._seed_input_sink(host_features)
        if isinstance(self.seed, WidthSeed):  # it acts at the layer consuming the slot's layer
            return host_features
        return self.run_seed(host_features)

    def run_seed(
        self, host_features: Tensor, seed_fn: Callable[[Tensor, bool], Tensor] | None = None
    ) -> Tensor:
        """`host_features` with the live seed applied as its stage says (the slot's own path,
        and a width seed's at its consumer).

        The seed's features are `seed(input)`, or `seed_fn(input, isolating)`, where input is
        `host_features`, detached while the seed's gradients are isolated. Skipped when the seed
        does not run or alpha is forced to 0; a TRAINING seed goes through straight-through
        (the value is the host's), a blended one through the alpha lerp.
        """
        state = self.state  # a plain attribute: the cheap test for DORMANT comes first
        if state is None or state.stage not in SEED_RUNS_STAGES or self.seed is None:
            return host_features
        override = self._alpha_override
        if override is not None and override == 0.0:
            # Nothing of the seed reaches the output (the counterfactual): skip it.
            return host_features
        # Only a TRAINING seed's alpha is read as a float: it is 0 for the whole stage.
        incubating = state.stage == SeedStage.TRAINING and override is None and state.alpha == 0.0
        if incubating and not (self.training or torch.is_grad_enabled()):
            # Evaluation in the incubator: the output is the host's anyway. (In train mode the
            # seed runs even without grad, as in training: a seed gone non-finite shows in the
            # output, which the governor's culprit search relies on.)
            return host_features
        seed_input = host_features.detach() if self.isolate_gradients else host_features
        if seed_fn is None:
            seed_features = self.seed(seed_input)
        else:
            seed_features = seed_fn(seed_input, self.isolate_gradients)
        if seed_features.dtype != host_features.dtype:
            # Under autocast a seed's output can come out in another dtype than the host's
            # features (a norm layer in float32 on bf16 features, or the other way round):
            # the host's dtype wins, so a slot never changes what the host computes in.
            seed_features = seed_features.to(host_features.dtype)
        if incubating:
            return ste_forward(host_features, seed_features)
        # The buffer, clamped into a new tensor: autograd saves that copy, so a later alpha
        # write (a ramp step, leaving `force_alpha`) before backward cannot invalidate the graph.
        # The host keeps its gradient (detach_host=False): it learns through the blend.
        return blend_with_isolation(host_features, seed_features, self._alpha, detach_host=False)

    @contextmanager
    def force_alpha(self, value: float) -> Iterator[None]:
        """Temporarily run the live seed at `value` (0.0 gives the host and the slot's fossils
        alone: the counterfactual)."""
        previous = self._alpha_override
        self._alpha_override = float(value)
        self._sync_alpha()
        try:
            yield
        finally:
            self._alpha_override = previous
            self._sync_alpha()

    @contextmanager
    def recording_seed_input(self, sink: Callable[[Tensor], object]) -> Iterator[None]:
        """Call `sink(features)` with the features entering the live seed (the host's, through
        the slot's fossils) on every forward while this is active."""
        previous = self._seed_input_sink
        self._seed_input_sink = sink
        try:
            yield
        finally:
            self._seed_input_sink = previous

    def _sync_alpha(self) -> None:
        """Write the effective alpha into the buffer the forward reads (no graph, no autograd)."""
        with torch.no_grad():
            self._alpha.fill_(min(max(float(self.alpha), 0.0), 1.0))

    # ------------------------------------------------------------------ lifecycle
    def germinate(
        self, blueprint_id: str, seed_id: str | None = None, host_module: nn.Module | None = None
    ) -> SeedState:
        """Plant a new seed from `blueprint_id`. The slot must have no live seed (it is DORMANT);
        fossils from earlier seeds stay below the new one."""
        if self.state is not None:
            self._raise_occupied()
        topology = self._topology(host_module)
        self.seed_topology = topology
        seed = self._build_seed(topology, blueprint_id, **self.blueprint_kwargs(blueprint_id))
        self._attach(seed, blueprint_id, host_module)
        state = _SlotState(
            seed_id=seed_id or f"{self.slot_id}-seed{self.seeds_planted + 1}",
            blueprint_id=blueprint_id,
            slot_id=self.slot_id,
            probe_shapes=self._probe_shapes(seed, topology),
        )
        gate = self.gates.check_gate(state, SeedStage.GERMINATED)
        if not gate.passed:
            if isinstance(seed, WidthSeed):
                seed.release()  # its hooks are on the host already
            raise ValueError(f"Cannot germinate blueprint '{blueprint_id}' in slot '{self.slot_id}': {gate.message}")
        self.seeds_planted += 1
        state.transition(SeedStage.GERMINATED)
        self._adopt(seed, state)
        self._record(state, SeedStage.DORMANT, SeedStage.GERMINATED, "")
        self.isolate_gradients = True
        self._alpha_schedule = None
        if host_module is not None:
            self.isolation_monitor.register(host_module, seed)
        self._emit(
            TelemetryEventType.SEED_GERMINATED,
            f"germinated {blueprint_id}",
            params=self.seed_param_count(),
            topology=topology,
        )
        return state

    def advance_stage(self, target_stage: SeedStage | None = None) -> GateResult:
        """Try to move to `target_stage` (default: the next stage) through its gate."""
        state = self.state
        if state is None:
            return GateResult(gate=None, passed=False, checks_failed=["no_seed"], message="slot is empty")
        target = NEXT_STAGE.get(state.stage) if target_stage is None else target_stage
        if target is None or not state.can_transition_to(target):
            name = target.name if target is not None else "nothing"
            return GateResult(
                gate=None,
                passed=False,
                checks_failed=["invalid_transition"],
                message=f"{state.stage.name} -> {name} is not a legal transition",
            )
        result = self.gates.check_gate(state, target)
        if result.passed:
            self._enter(target)
        return result

    def cull(self, reason: str = "") -> bool:
        """Remove a live seed; FOSSILIZED seeds (and empty slots) cannot be culled."""
        state = self.state
        if state is None or state.stage not in ACTIVE_STAGES:
            return False
        self._enter(SeedStage.CULLED, reason=reason)
        return True

    def step_epoch(self) -> None:
        """Advance the lifecycle clock by one epoch: mechanical gates, alpha ramp, embargo."""
        state = self.state
        if state is not None:
            self._step_lifecycle(state)
        self.epoch += 1

    def _step_lifecycle(self, state: SeedState) -> None:
        metrics = state.metrics
        metrics.epochs_total += 1
        metrics.epochs_in_current_stage += 1
        config = self.task_config
        match state.stage:
            case SeedStage.GERMINATED:
                self.advance_stage(SeedStage.TRAINING)
            case SeedStage.TRAINING:
                g2 = self.advance_stage(SeedStage.BLENDING)
                if not g2.passed and metrics.epochs_in_current_stage >= config.max_training_epochs:
                    failed = "; ".join(g2.checks_failed)
                    self.cull(f"stalled: G2 not passed in {config.max_training_epochs} epochs ({failed})")
            case SeedStage.BLENDING:
                metrics.alpha_ramp_step += 1
                assert self._alpha_schedule is not None, "BLENDING without an alpha schedule"
                self.set_alpha(self._alpha_schedule(metrics.alpha_ramp_step))
                self.advance_stage(SeedStage.SHADOWING)
            case SeedStage.SHADOWING:
                self.advance_stage(SeedStage.PROBATIONARY)
            case SeedStage.PROBATIONARY:
                if metrics.epochs_in_current_stage >= config.max_probation_epochs:
                    self.cull(f"probation expired after {config.max_probation_epochs} epochs")
            case SeedStage.CULLED:
                self._enter(SeedStage.EMBARGOED)
            case SeedStage.EMBARGOED:
                if metrics.epochs_in_current_stage >= config.embargo_epochs:
                    self._enter(SeedStage.RESETTING)
            case SeedStage.RESETTING:
                self._enter(SeedStage.DORMANT)

    def start_blending(self, total_steps: int | None = None) -> None:
        """Start the alpha ramp (normally on entering BLENDING)."""
        if self.state is None:
            raise RuntimeError(f"Slot '{self.slot_id}' has no seed to blend")
        steps = total_steps or self.task_config.blending_epochs
        self._alpha_schedule = AlphaSchedule(steps)
        self.state.blending_steps_total = steps
        self.state.metrics.alpha_ramp_step = 0
        self.set_alpha(self._alpha_schedule(0))

    def set_alpha(self, value: float) -> None:
        if self.state is None:
            raise RuntimeError(f"Slot '{self.slot_id}' has no seed; alpha cannot be set")
        self.state.alpha = min(max(float(value), 0.0), 1.0)

    # ------------------------------------------------------------------ checkpointing
    def lifecycle_state(self) -> dict[str, Any]:
        """Plain data describing the slot's lifecycle (the seed's weights live in state_dict)."""
        state = self.state
        record: dict[str, Any] = {
            "epoch": self.epoch,
            "seeds_planted": self.seeds_planted,
            "isolate_gradients": self.isolate_gradients,
            "topology": self.seed_topology,
            "transitions": [t.to_dict() for t in self.transitions],
            "fossils": [report.to_dict() for report in self.fossil_reports],
            "widenings": [report.to_dict() for report in self.widenings],
            "seed": None,
        }
        if state is not None:
            record["seed"] = {
                "seed_id": state.seed_id,
                "blueprint_id": state.blueprint_id,
                "stage": int(state.stage),
                "previous_stage": int(state.previous_stage),
                "alpha": state.alpha,
                "blending_steps_total": state.blending_steps_total,
                "is_healthy": state.is_healthy,
                "probe_shapes": None if state.probe_shapes is None else [list(shape) for shape in state.probe_shapes],
                "stage_history": [list(item) for item in state.stage_history],
                "metrics": {name: getattr(state.metrics, name) for name in SeedMetrics.__dataclass_fields__},
                "has_module": self.seed is not None,
            }
        return record

    def load_lifecycle_state(self, record: dict[str, Any], host_module: nn.Module | None = None) -> None:
        """Rebuild the slot from `lifecycle_state`: its stack of fossils and its live seed, as
        fresh modules to load the weights into (so load this before the model's state dict)."""
        self.epoch = record["epoch"]
        self.seeds_planted = record["seeds_planted"]
        self.isolate_gradients = record["isolate_gradients"]
        self.seed_topology = record["topology"]
        # Moves not yet handed out when the checkpoint was taken.
        self.transitions = [StageTransition.from_dict(t) for t in record["transitions"]]
        if isinstance(self.state, _SlotState):
            self.state._detach()
        self._release_seed()
        self.state, self._alpha_schedule = None, None
        self.fossils = nn.ModuleList()
        self.pending_merges = []
        self.widenings = [WidthReport(**report) for report in record["widenings"]]
        if self.widenings and host_module is None:
            raise ValueError(f"slot '{self.slot_id}' has merged width: load it with its host")
        self.fossil_reports = [FossilReport(**report) for report in record["fossils"]]
        # In the order they were kept: a seed may be built from what is below it (a stacked copy
        # of a block as wide as it was then); a merged width makes its layers that wide again.
        for report in sorted([*self.widenings, *self.fossil_reports], key=lambda kept: kept.epoch):
            if isinstance(report, WidthReport):
                site, merge = widen_fresh(host_module, self, report)
                self._follow_width(site)
                if merge is not None:
                    self.pending_merges.append(merge)
                continue
            fossil = self._build_seed(self.seed_topology, report.blueprint_id, **self.blueprint_kwargs(report.blueprint_id))
            self._attach(fossil, report.blueprint_id, host_module)
            self.fossils.append(fossil)
        saved = record["seed"]
        if saved is None:
            return
        state = _SlotState(
            seed_id=saved["seed_id"],
            blueprint_id=saved["blueprint_id"],
            slot_id=self.slot_id,
            stage=SeedStage(saved["stage"]),
            previous_stage=SeedStage(saved["previous_stage"]),
            alpha=saved["alpha"],
            metrics=SeedMetrics(**saved["metrics"]),
            blending_steps_total=saved["blending_steps_total"],
            is_healthy=saved["is_healthy"],
            probe_shapes=None if saved["probe_shapes"] is None else tuple(tuple(shape) for shape in saved["probe_shapes"]),
        )
        state.stage_history.extend(tuple(item) for item in saved["stage_history"])
        self._adopt(None, state)
        if saved["has_module"]:
            self.seed = self._build_seed(self.seed_topology, state.blueprint_id, **self.blueprint_kwargs(state.blueprint_id))
            self._attach(self.seed, state.blueprint_id, host_module)
            if host_module is not None:
                self.isolation_monitor.register(host_module, self.seed)
        if state.blending_steps_total:
            self._alpha_schedule = AlphaSchedule(state.blending_steps_total)

    # ------------------------------------------------------------------ measurement
    def record_gradient_norms(self) -> tuple[float, float] | None:
        """Read host/seed gradient norms now (after backward) into the seed's metrics."""
        if self.state is None or self.seed is None or not self.isolation_monitor._seed_params:
            return None
        host_norm, seed_norm = self.isolation_monitor.grad_norms()
        self.state.metrics.record_gradient_norms(host_norm, seed_norm)
        return host_norm, seed_norm

    def seed_param_count(self) -> int:
        """Parameters of the live seed (0 without one); the fossils are `fossil_param_count`."""
        return sum(p.numel() for p in self.seed.parameters()) if self.seed is not None else 0

    def fossil_param_count(self) -> int:
        return sum(p.numel() for p in self.fossils.parameters())

    def report(self) -> SeedReport | None:
        state = self.state
        if state is None:
            return None
        return SeedReport(
            seed_id=state.seed_id,
            blueprint_id=state.blueprint_id,
            slot_id=self.slot_id,
            stage=state.stage,
            epochs_total=state.metrics.epochs_total,
            params=self.seed_param_count(),
            alpha=state.alpha,
            counterfactual_contribution=state.metrics.counterfactual_contribution,
            seed_gradient_norm_ratio=state.metrics.seed_gradient_norm_ratio,
            is_healthy=state.is_healthy,
            best_val_accuracy=state.metrics.best_val_accuracy,
            accuracy_at_blending_start=state.metrics.accuracy_at_blending_start,
            gradient_norm_avg=state.metrics.gradient_norm_avg,
        )

    # ------------------------------------------------------------------ internals
    def _adopt(self, seed: nn.Module | None, state: _SlotState) -> None:
        """Install a seed and its state; from now on alpha writes reach the `_alpha` buffer
        and stage writes are lifecycle moves."""
        self.seed, self.state = seed, state
        state._on_alpha = self._alpha_written
        state._on_stage = self._assign_stage
        self._sync_alpha()

    def _alpha_written(self) -> None:
        """Any write of `state.alpha`: the metrics' `current_alpha` and the buffer follow it."""
        self.state.metrics.current_alpha = self.state.alpha
        self._sync_alpha()

    def _assign_stage(self, state: _SlotState, stage: SeedStage) -> None:
        """`slot.state.stage = X`: the same move `advance_stage`/`cull` make, minus the gate."""
        if state is not self.state:  # a record the slot already let go of: plain data
            state._detach()
            state.stage = stage
            return
        if stage == state.stage:
            return
        if not state.can_transition_to(stage):
            legal = ", ".join(s.name for s in sorted(VALID_TRANSITIONS[state.stage])) or "none"
            raise ValueError(
                f"Slot '{self.slot_id}': {state.stage.name} -> {stage.name} is not a legal "
                f"transition (from {state.stage.name}: {legal})"
            )
        self._enter(stage, reason="stage assigned directly")

    def _enter(self, stage: SeedStage, reason: str = "") -> None:
        """Move the seed to `stage` (already known to be legal) and apply its side effects."""
        state = self.state
        if state is None or not state.transition(stage):
            current = "empty" if state is None else state.stage.name
            raise RuntimeError(f"Slot '{self.slot_id}': illegal move {current} -> {stage.name}")
        self._record(state, state.previous_stage, stage, reason)
        match stage:
            case SeedStage.TRAINING:
                self.set_alpha(0.0)
            case SeedStage.BLENDING:
                # Isolation protects the host while the seed incubates; once the seed's
                # output is mixed in, the host must learn through it (as it will once fossilized).
                self.isolate_gradients = False
                self.start_blending()
            case SeedStage.SHADOWING:
                # G3 lets the seed in at alpha >= 0.95; from here on it runs at full alpha.
                self.set_alpha(1.0)
            case SeedStage.CULLED:
                self._release_seed()
                self.isolation_monitor = GradientIsolationMonitor()
            case SeedStage.FOSSILIZED:
                if isinstance(self.seed, WidthSeed):
                    self._merge_width(state)
                else:
                    self._add_to_stack(state)
        event_type = {**OUTCOME_EVENTS, SeedStage.DORMANT: TelemetryEventType.SEED_RESET}.get(
            stage, TelemetryEventType.SEED_STAGE_CHANGED
        )
        # A decided seed's event says how long it spent in each stage.
        history = {"stage_history": [[SeedStage(v).name, epochs] for v, epochs in state.stage_history]}
        self._emit(
            event_type,
            reason or f"{state.previous_stage.name} -> {stage.name}",
            stage=stage.name,
            previous_stage=state.previous_stage.name,
            counterfactual_contribution=state.metrics.counterfactual_contribution,
            stack_depth=self.stack_depth,
            **(history if stage in OUTCOME_EVENTS else {}),
        )
        if stage in (SeedStage.DORMANT, SeedStage.FOSSILIZED):
            # The slot is free: a culled seed has cleared, or a kept one has joined the stack.
            state._detach()
            self.state = None
            self._sync_alpha()

    def _add_to_stack(self, state: SeedState) -> None:
        """The fossilized seed becomes the top of the stack, part of the host for good."""
        self.fossil_reports.append(
            FossilReport(
                seed_id=state.seed_id,
                blueprint_id=state.blueprint_id,
                slot_id=self.slot_id,
                params=self.seed_param_count(),
                counterfactual_contribution=state.metrics.counterfactual_contribution,
                epoch=self.epoch,
            )
        )
        self.fossils.append(self.seed)
        self.seed = None
        self.isolation_monitor = GradientIsolationMonitor()
        self._alpha_schedule = None

    def _merge_width(self, state: SeedState) -> None:
        """The fossilized width seed becomes part of its layer: wider for good, no seed left."""
        seed = self.seed
        added = seed.added_params()
        self.pending_merges.append(seed.merge())
        site = seed.site
        self.widenings.append(
            WidthReport(
                seed_id=state.seed_id,
                blueprint_id=state.blueprint_id,
                slot_id=self.slot_id,
                units_added=seed.units_added,
                width=site.units,
                kind=seed.kind,
                params=added,
                counterfactual_contribution=state.metrics.counterfactual_contribution,
                epoch=self.epoch,
            )
        )
        self._follow_width(site)
        self.seed = None
        self.isolation_monitor = GradientIsolationMonitor()
        self._alpha_schedule = None

    def _follow_width(self, site: WidthSite) -> None:
        """Where the slot's features are the widened layer's units, they are that wide now: the
        seeds planted from here on are built for the new width."""
        if site.at_slot:
            self.channels = site.units
            self._probe_cache.clear()

    def drain_merges(self) -> list[Merge]:
        """The width merges since the last drain (the optimisers must swap in their parameters)."""
        merges, self.pending_merges = self.pending_merges, []
        return merges

    def _release_seed(self) -> None:
        """Let go of the live seed module (a width seed's hooks come off the host)."""
        self.unhook_host()
        self.seed = None

    def unhook_host(self) -> None:
        """Take a live width seed's hooks off the host's layers (the slot leaves the model, or
        lets go of the seed); every other seed acts through the slot alone."""
        if isinstance(self.seed, WidthSeed):
            self.seed.release()

    def _record(self, state: SeedState, from_stage: SeedStage, to_stage: SeedStage, reason: str) -> None:
        self.transitions.append(
            StageTransition(
                slot_id=self.slot_id,
                seed_id=state.seed_id,
                blueprint_id=state.blueprint_id,
                from_stage=from_stage,
                to_stage=to_stage,
                reason=reason,
                epoch=self.epoch,
            )
        )

    def drain_transitions(self) -> list[StageTransition]:
        """The moves recorded since the last drain, oldest first; the list starts empty again."""
        moved, self.transitions = self.transitions, []
        return moved

    def _raise_occupied(self) -> None:
        state = self.state
        assert state is not None
        if state.stage == SeedStage.EMBARGOED:
            left = self.task_config.embargo_epochs - state.metrics.epochs_in_current_stage
            raise RuntimeError(
                f"Slot '{self.slot_id}' is embargoed after culling {state.seed_id}: "
                f"it can germinate again in {max(left, 0) + 1} epoch(s) (after RESETTING)."
            )
        if state.stage in FAILURE_STAGES:  # CULLED or RESETTING: EMBARGOED was answered above
            raise RuntimeError(
                f"Slot '{self.slot_id}' is still clearing culled {state.seed_id} ({state.stage.name}); "
                "it can germinate again once it is DORMANT."
            )
        raise RuntimeError(
            f"Slot '{self.slot_id}' is occupied by {state.seed_id} ({state.blueprint_id}, "
            f"{state.stage.name}); cull it or choose another slot."
        )

    def _topology(self, host_module: nn.Module | None) -> str:
        if self._explicit_config or host_module is None:
            return self.task_config.topology
        return getattr(host_module, "topology", self.task_config.topology)

    def blueprint_kwargs(self, blueprint_id: str) -> dict[str, Any]:
        """The task's options for `blueprint_id` (how every seed of it in this slot is built)."""
        return self.task_config.blueprint_kwargs.get(blueprint_id, {})

    def plant_refusal(self, blueprint_id: str, host_module: nn.Module) -> str | None:
        """Why a seed of `blueprint_id` that starts from the host's layers cannot be planted here
        now (a width seed needs a layer it can widen, a stack a block below to copy); None when
        it can. Asks the seed's own `refusal(host, slot)`, the check its `attach` makes, on a
        seed built on the meta device: nothing is computed and no random number is drawn."""
        topology = self._topology(host_module)
        with torch.device("meta"):
            seed = BlueprintRegistry.create(topology, blueprint_id, self.channels, **self.blueprint_kwargs(blueprint_id))
        refusal = getattr(seed, "refusal", None)
        return None if refusal is None else refusal(host_module, self)

    def _build_seed(self, topology: str, blueprint_id: str, **kwargs: Any) -> nn.Module:
        """A fresh seed module on the device and in the dtype of this slot's features."""
        seed = BlueprintRegistry.create(topology, blueprint_id, self.channels, **kwargs)
        return seed.to(device=self.device, dtype=self.dtype)

    def _attach(self, seed: nn.Module, blueprint_id: str, host_module: nn.Module | None) -> None:
        """Let a seed that starts from the host (it has `attach(host, slot)`) see where it sits.

        A depth seed copies the block below it, say; called when it is planted and again when
        a checkpoint rebuilds it (its weights then come from the state dict).
        """
        attach = getattr(seed, "attach", None)
        if attach is None:
            return
        if host_module is None:
            raise ValueError(
                f"Blueprint '{blueprint_id}' starts from the host's own layers: plant it through "
                f"the model (model.germinate('{self.slot_id}', '{blueprint_id}')) or pass host_module"
            )
        attach(host_module, self)

    def _get_shape_probe(self, topology: str) -> Tensor:
        """A cached input for shape checks; dropped when the slot's device or dtype changes."""
        device, dtype = self.device, self.dtype
        probe = self._probe_cache.get(topology)
        if probe is not None and probe.device == device and probe.dtype == dtype:
            return probe
        if probe is not None:
            self._probe_cache.clear()
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(feature_shape(topology, self.channels), generator=generator)
        probe = probe.to(device=device, dtype=dtype)
        self._probe_cache[topology] = probe
        return probe

    def _probe_shapes(self, seed: nn.Module, topology: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The shape of the slot's probe, and of what `seed` gives back for it (gate G0 compares them)."""
        probe = self._get_shape_probe(topology)
        was_training = seed.training
        seed.eval()
        with torch.no_grad():
            out = seed(probe)
        seed.train(was_training)
        return tuple(probe.shape), tuple(out.shape)

    def _emit(self, event_type: TelemetryEventType, message: str = "", **data: Any) -> None:
        if self.fast_mode or self.on_telemetry is None or self.state is None:
            return
        self.on_telemetry(
            TelemetryEvent(
                event_type=event_type,
                epoch=self.epoch,
                slot_id=self.slot_id,
                seed_id=self.state.seed_id,
                blueprint_id=self.state.blueprint_id,
                message=message,
                data=data,
            )
        )
