"""What must grow with a layer of any model when its output widens: `esper.graft(..., widen=[...])`.

torch-pruning's `DependencyGraph` finds it. Pruning a layer's output channels is the inverse
of widening them, and the group it must prune with them is the group that must grow: the
layer's BatchNorm, the element-wise ops after it, the layers that consume it, and the layers
tied to it by additions (a residual network's stem and every block's last conv, with their
norms). It traces the model through autograd (so a forward with Python control flow is
fine, where `torch.fx` would fail), which is the graph walking we would otherwise write by
hand. GroMo (`gromo`) was evaluated for the growing itself and not used: its growing modules
replace the model's layers with its own (`LinearGrowingModule`, ...), linked by hand to their
neighbours, so a user's module names and state_dict keys would not survive, and its
initialisations (TINY) need data and gradient statistics that a growth step would have to
pay for; Esper's `WidthSeed` grows the user's own layers in place.

Supported: producers (`nn.Linear` or `nn.Conv2d`, groups 1: the layer, and those its output
is added to), each optionally with the BatchNorm right after it; ops that act on each unit
alone (activations, dropout, pooling, a mean over space, the additions); consumers
(`nn.Linear` or `nn.Conv2d`, groups 1). Refused in one line, naming what: a layer whose
output is the model's output; one whose output is reshaped, concatenated, normalised over
units or used by a parameter; a group with a layer that both reads and writes its units. A
last check runs the model on the example input with a unit appended at every producer: a
model whose output changes (an op that mixes units, as a softmax over channels would) is
refused too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from esper.kasmina.width import WidthSite, _unit_axis

_KINDS = {  # torch-pruning's op types that Esper cannot carry new units through
    "RESHAPE": "a reshape or flatten",
    "CONCAT": "a concatenation",
    "SPLIT": "a split",
    "UNBIND": "an unbind",
    "SLICE": "a slice",
    "EXPAND": "an expand",
    "LN": "a LayerNorm",
    "GN": "a GroupNorm",
    "IN": "an InstanceNorm",
    "EMBED": "an embedding",
    "PARAMETER": "a parameter",
    "MHA": "a MultiheadAttention",
    "LSTM": "an LSTM",
    "PRELU": "a PReLU",
    "DEPTHWISE_CONV": "a depthwise conv",
    "CUSTOMIZED": "a custom layer",
}


def dependency_graph(model: nn.Module, example_input: Any, call: Any) -> Any:
    """torch-pruning's `DependencyGraph` of `model` on `example_input` (`call(model, input)`
    runs one forward), built in eval mode so no BatchNorm statistic moves."""
    try:
        import torch_pruning as tp
    except ImportError:
        raise ValueError(
            "esper.graft(..., widen=[...]) needs torch-pruning: pip install 'esper[graft-widen]'"
        ) from None
    from esper.kasmina.graft import training_modes_kept  # here: graft imports this module

    try:
        with training_modes_kept(model):
            model.eval()
            with torch.enable_grad():
                return tp.DependencyGraph().build_dependency(
                    model, example_inputs=example_input, forward_fn=call
                )
    except Exception as error:
        raise ValueError(
            f"torch-pruning could not trace {type(model).__name__} to find what grows with the "
            f"widened layers ({type(error).__name__}: {error}); widen=[] grafts it without them"
        ) from error


def width_site(model: nn.Module, name: str, graph: Any) -> WidthSite:
    """The `WidthSite` of layer `name` from torch-pruning's group for its output channels;
    a `ValueError` naming what stands in the way when Esper cannot widen it."""
    layer = model.get_submodule(name)
    what = f"Cannot widen '{name}' ({type(layer).__name__})"
    if type(layer) not in (nn.Linear, nn.Conv2d) or getattr(layer, "groups", 1) != 1:
        raise ValueError(f"{what}: Esper widens an nn.Linear or an nn.Conv2d (groups=1); name one of those")
    if layer not in graph.module2node:
        raise ValueError(f"{what}: it did not run in the forward on example_input; widen a layer the forward calls")
    names = {module: module_name for module_name, module in model.named_modules()}
    order = {module: i for i, module in enumerate(names)}  # model order, for messages

    def called(node: Any) -> str:
        return f"'{names[node.module]}'" if node.module in names else node.name

    group = graph.get_pruning_group(layer, graph.get_pruner_of_module(layer).prune_out_channels, idxs=[0])
    deps = [dep for dep, _ in group]

    def modules(handler: str) -> list[Any]:
        """The group's layers (graph nodes) whose inputs ("prune_in_channels") or outputs
        ("prune_out_channels") are these units, once each, in model order."""
        found = [dep.target for dep in deps if dep.handler.__name__ == handler and dep.target.type.name in ("CONV", "LINEAR")]
        return sorted(dict.fromkeys(found), key=lambda node: order.get(node.module, len(order)))

    consumers = modules("prune_in_channels")
    producers = [graph.module2node[layer], *(node for node in modules("prune_out_channels") if node.module is not layer)]
    for node in producers[1:]:
        tied = node.module
        if type(tied) is not type(layer) or getattr(tied, "groups", 1) != 1:
            raise ValueError(f"{what}: its output channels are tied (by an addition) to {called(node)} "
                             f"({type(tied).__name__}), which Esper cannot widen with it")  # fmt: skip
    looped = [called(node) for node in producers if node in consumers]
    if looped:
        raise ValueError(f"{what}: {', '.join(looped)} both read and write its units (a residual branch without "
                         "a norm); Esper cannot widen such a group")  # fmt: skip
    norms: dict[nn.Module, nn.Module] = {}  # producer -> its norm
    path = list(producers)
    for dep in deps:
        node, kind = dep.target, dep.target.type.name
        if node in producers or node in consumers or dep.source in consumers:
            continue  # the layers; the consumers' own ops (a Linear's weight transpose)
        fed_by = [inp for inp in node.inputs if inp in producers]  # a norm right after a producer
        if kind == "BN" and len(fed_by) == 1 and fed_by[0].module not in norms:
            norms[fed_by[0].module] = node.module
            path.append(node)
        elif kind == "ELEMENTWISE":
            path.append(node)
        else:
            described = _KINDS.get(kind, kind.lower())
            raise ValueError(f"{what}: its output reaches {described} ({called(node)}), which Esper cannot extend with new units")
    if any(not node.outputs for node in path):
        raise ValueError(f"{what}: its output is the model's output, whose width is fixed; widen a hidden layer")
    if not consumers:
        raise ValueError(f"{what}: no layer Esper can extend consumes its output; widen another layer")
    for node in consumers:
        consumer = node.module
        if type(consumer) not in (nn.Linear, nn.Conv2d) or getattr(consumer, "groups", 1) != 1:
            raise ValueError(
                f"{what}: its consumer {called(node)} ({type(consumer).__name__}) is not an nn.Linear or "
                "an nn.Conv2d with groups=1, whose inputs Esper can extend"
            )
    for norm in norms.values():
        if not norm.affine or not norm.track_running_stats or type(norm) not in (nn.BatchNorm1d, nn.BatchNorm2d):
            raise ValueError(f"{what}: its norm '{names[norm]}' must be a BatchNorm1d/2d with affine weights and running statistics")
    tied = tuple((node.module, norms.get(node.module)) for node in producers[1:])
    more = tuple(node.module for node in consumers[1:])
    return WidthSite(layer, norms.get(layer), None, consumers[0].module, tied=tied, more_consumers=more)


def check_carried(model: nn.Module, name: str, site: WidthSite, example_input: Any, call: Any) -> None:
    """Refuse `site` unless the model's own code carries a unit appended to the layer's (or its
    norm's) output to the consumer and changes nothing else: run the model with one random
    unit in flight (eval mode, no gradients) and compare every output with a plain run's."""
    from esper.kasmina.graft import training_modes_kept  # here: graft imports this module

    arrived: list[bool] = []

    def append(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        axis = _unit_axis(site.layer)
        shape = list(output.shape)
        shape[axis] = 1
        return torch.cat([output, torch.randn(shape, dtype=output.dtype, device=output.device)], dim=axis)

    def split(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        axis, width = _unit_axis(module), module.weight.shape[1]
        arrived.append(args[0].shape[axis] == width + 1)
        return (args[0].narrow(axis, 0, width).contiguous(), *args[1:])

    refusal = (
        f"Cannot widen '{name}': the model's code between it and its consumer does not carry new units "
        "unchanged{why} (an op there mixes units or fixes the width); widen another layer"
    )
    with training_modes_kept(model), torch.no_grad():
        model.eval()
        plain = _tensors(call(model, example_input))
        producers = [(site.layer, site.norm), *site.tied]
        handles = [(norm or layer).register_forward_hook(append) for layer, norm in producers]
        handles += [
            consumer.register_forward_pre_hook(split, prepend=True)
            for consumer in (site.consumer, *site.more_consumers)
        ]
        try:
            carried = _tensors(call(model, example_input))
        except Exception as error:
            raise ValueError(refusal.format(why=f" ({type(error).__name__}: {error})")) from error
        finally:
            for handle in handles:
                handle.remove()
    same = len(carried) == len(plain) and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(plain, carried))
    if not arrived or not all(arrived) or not same:
        raise ValueError(refusal.format(why=""))


def _tensors(value: Any) -> list[Tensor]:
    """The tensors in a model's output (nested tuples, lists and dicts), in order."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []
