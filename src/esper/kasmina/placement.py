"""The one way Esper places a slot: the slot acts on the output of a module.

A `SlotMount` owns its slots (in `self.slots`, so they move, save and count with it)
and applies each one to the output of the module its injection point names,
through a forward hook on that module. The built-in hosts (`StagedHost`: their
injection points are trunk stages) and `esper.graft` (any named module of any model)
are both `SlotMount`s; nothing else places slots.

Why a forward hook and not a wrapper module put in the target's place: a hook leaves
the model's structure as it was. Module names, `state_dict` keys (so pretrained
checkpoints still load), attribute access (`model.layer2` is still the user's module)
and code that calls the module by any reference all keep working, and the model's
own forward, whatever it does with the output (branches, residuals), runs
unchanged. `torch.compile` traces through the hook (fullgraph). The price, measured
in `benchmarks/bench_dormant.py` and `bench_graft.py`: a hooked module takes
`nn.Module.__call__`'s general path, a few microseconds per call. Hooks fire only
through `module(...)`, not `module.forward(...)`; a module called twice in one
forward has its slot applied to each call's output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


class _ApplySlot:
    """Forward hook: the module's output goes through the slot (its return replaces it)."""

    __slots__ = ("slot",)

    def __init__(self, slot: nn.Module) -> None:
        self.slot = slot

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        return self.slot(output)


class _Record:
    """Forward hook that hands the module's output to `sink` and leaves it unchanged."""

    __slots__ = ("sink",)

    def __init__(self, sink: Callable[[Any], object]) -> None:
        self.sink = sink

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.sink(output)


def record_output(module: nn.Module, sink: Callable[[Any], object]) -> RemovableHandle:
    """Call `sink(output)` on every output of `module`, before any slot placed on it acts.

    Remove the returned handle when done.
    """
    return module.register_forward_hook(_Record(sink), prepend=True)


def holds_slot(module: nn.Module) -> bool:
    """Whether a slot is already placed on `module`'s output."""
    return any(isinstance(hook, _ApplySlot) for hook in module._forward_hooks.values())


def _module_key(key: str) -> str:
    """`nn.ModuleDict` keys cannot contain '.', which module paths (graft targets) do."""
    return key.replace(".", ":")


class SlotMount(nn.Module):
    """Owns slots and places each on the output of the module its injection point names.

    Subclasses set `injection_points` (key -> channels of the features there) and
    implement `injection_module(key)`.
    """

    injection_points: dict[str, int]

    def __init__(self) -> None:
        super().__init__()
        self.slots = nn.ModuleDict()
        self._slot_hooks: dict[str, RemovableHandle] = {}

    def injection_module(self, key: str) -> nn.Module:
        """The module whose output the injection point `key` receives."""
        raise NotImplementedError

    def replace_injection_module(self, key: str, module: nn.Module) -> None:
        """Put `module` where the injection point `key`'s module is (a slot there stays put
        only if it is re-registered: call this on a point without a slot)."""
        raise NotImplementedError

    def fuse_slots(self) -> None:
        """Build every slot's fossils into the model, after the module they sit on, and remove
        the slots and their hooks: what is left is the grown network as plain layers.

        A live seed is left out (as at alpha 0): it is not part of the network until it is
        fossilized. Deeper points first, so a replaced module never renames one still to do.
        """
        for key in sorted(self._slot_hooks, key=lambda k: k.count("."), reverse=True):
            slot = self.placed_slots()[key]
            fossils = list(slot.fossils)
            slot.unhook_host()  # a live width seed acts through hooks on the host's own layers
            self.unregister_slot(key)
            if fossils:
                self.replace_injection_module(key, nn.Sequential(self.injection_module(key), *fossils))

    def register_slot(self, slot_id: str, slot: nn.Module) -> None:
        """Place `slot` on injection point `slot_id` (replacing any slot already there)."""
        if slot_id not in self.injection_points:
            raise ValueError(
                f"Unknown injection point '{slot_id}'. Available: {', '.join(self.injection_points)}"
            )
        if slot_id in self._slot_hooks:
            self.unregister_slot(slot_id)
        self.slots[_module_key(slot_id)] = slot
        self._slot_hooks[slot_id] = self.injection_module(slot_id).register_forward_hook(
            _ApplySlot(slot)
        )

    def unregister_slot(self, slot_id: str) -> None:
        if slot_id not in self._slot_hooks:
            raise ValueError(f"No slot registered at '{slot_id}'")
        self._slot_hooks.pop(slot_id).remove()
        del self.slots[_module_key(slot_id)]

    def placed_slots(self) -> dict[str, nn.Module]:
        """Injection point -> slot, for every slot placed, in the order they were placed."""
        return {key: self.slots[_module_key(key)] for key in self._slot_hooks}

    def host_parameters(self) -> list[nn.Parameter]:
        """The host's own parameters, excluding anything planted in its slots."""
        return [param for name, param in self.named_parameters() if not name.startswith("slots.")]


def injected_module(host: nn.Module, key: str) -> nn.Module:
    """The module whose output the slot `key` acts on, in a built-in host or a grafted model.

    A built-in host names its stages by injection point; `esper.graft` names the model's own
    modules, so there the key is the module's name in the model.
    """
    if isinstance(host, SlotMount):
        return host.injection_module(key)
    return host.get_submodule(key)
