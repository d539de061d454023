"""Gradient isolation primitives: how a seed trains behind the host without changing it.

`ste_forward` is the incubator: its value is the host's, yet the seed receives the
task gradient. `blend_with_isolation` is the lerp used once the seed is blended in.
Both are pure tensor ops so they compile with `fullgraph=True`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def ste_forward(host_features: Tensor, seed_features: Tensor) -> Tensor:
    """Straight-through: value equals `host_features`, gradients reach both inputs.

    `seed - seed.detach()` is exactly zero in value but carries d/d(seed) = 1, so
    the seed learns from the task loss while the forward pass is the host's.
    """
    return host_features + (seed_features - seed_features.detach())


def blend_with_isolation(
    host_features: Tensor,
    seed_features: Tensor,
    alpha: float | Tensor,
    detach_host: bool = True,
) -> Tensor:
    """Lerp from host to seed: `(1 - alpha) * host + alpha * seed`, alpha clamped to [0, 1].

    With `detach_host` the host term carries no gradient, so only the seed learns
    from the blended output (the host still learns through its own path upstream).
    """
    if isinstance(alpha, Tensor):
        alpha = alpha.clamp(0.0, 1.0).to(seed_features.dtype)
    else:
        alpha = min(max(float(alpha), 0.0), 1.0)
    host = host_features.detach() if detach_host else host_features
    return torch.lerp(host, seed_features, alpha)


class AlphaSchedule:
    """Sigmoid ramp from `start` to `end` over `total_steps`, hitting both ends exactly.

    The logistic curve is rescaled so step 0 gives `start` and step `total_steps`
    gives `end`; `temperature` widens (>1) or sharpens (<1) the middle of the ramp.
    """

    _STEEPNESS = 10.0

    def __init__(
        self, total_steps: int, start: float = 0.0, end: float = 1.0, temperature: float = 1.0
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"AlphaSchedule needs total_steps >= 1, got {total_steps}")
        if temperature <= 0:
            raise ValueError(f"AlphaSchedule needs temperature > 0, got {temperature}")
        self.total_steps = total_steps
        self.start = start
        self.end = end
        self.temperature = temperature
        k = self._STEEPNESS / temperature
        self._low = 1.0 / (1.0 + math.exp(k / 2))
        self._high = 1.0 / (1.0 + math.exp(-k / 2))
        self._k = k

    def __call__(self, step: int) -> float:
        progress = min(max(step / self.total_steps, 0.0), 1.0)
        sigmoid = 1.0 / (1.0 + math.exp(-self._k * (progress - 0.5)))
        fraction = (sigmoid - self._low) / (self._high - self._low)
        # Written as a weighted sum so fraction 0 and 1 give `start` and `end` exactly.
        return self.start * (1.0 - fraction) + self.end * fraction


def _grad_norm(params: list[nn.Parameter], device: torch.device) -> Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class GradientIsolationMonitor:
    """Measures host and seed gradient norms after a backward pass.

    `check_isolation` (public API) judges a backward pass that should not reach
    the host, such as a loss on the seed's output alone in the incubator: any
    host gradient above `threshold` is a violation. Esper's own training never
    runs such a pass (the task loss always reaches the host, by design), so it
    is there for users checking a seed of their own. `grad_norms` gives both
    norms without judging; the trainer reads it for the seed/host gradient ratio
    that G2 checks. Norms use one `torch._foreach_norm` per group and a single
    host synchronisation.
    """

    def __init__(self, threshold: float = 1e-6) -> None:
        self.threshold = threshold
        self._host_params: list[nn.Parameter] = []
        self._seed_params: list[nn.Parameter] = []
        self.violations = 0

    def register(self, host_module: nn.Module, seed_module: nn.Module) -> None:
        self._seed_params = list(seed_module.parameters())
        # A host that holds slots must count none of their seeds (this one or others) as host.
        own = getattr(host_module, "host_parameters", None)
        candidates = own() if own is not None else host_module.parameters()
        seed_ids = {id(p) for p in self._seed_params}
        self._host_params = [p for p in candidates if id(p) not in seed_ids]

    def grad_norms(self) -> tuple[float, float]:
        """(host_grad_norm, seed_grad_norm) of the current `.grad` fields."""
        params = self._seed_params or self._host_params
        if not params:
            return 0.0, 0.0
        device = params[0].device
        both = torch.stack([_grad_norm(self._host_params, device), _grad_norm(self._seed_params, device)])
        host, seed = both.tolist()
        return host, seed

    def check_isolation(self) -> tuple[bool, dict[str, float | bool | int]]:
        host_norm, seed_norm = self.grad_norms()
        isolated = host_norm <= self.threshold
        if not isolated:
            self.violations += 1
        return isolated, {
            "host_grad_norm": host_norm,
            "seed_grad_norm": seed_norm,
            "isolated": isolated,
            "violations": self.violations,
        }

    def reset(self) -> None:
        self.violations = 0

