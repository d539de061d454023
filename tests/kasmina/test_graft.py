"""esper.graft: seed slots on any model's modules, by name, with the model's own call signature."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import esper
from esper.kasmina.slot import QualityGates, SeedSlot
from esper.leyline import Action, ActionKind, SeedStage
from esper.tolaria import MorphogeneticTrainer, OptimConfig
from esper.tolaria.trainer import validate_with_counterfactuals

# Gates that let a seed through on schedule: these tests are about mechanics, not judgement.
OPEN_GATES = QualityGates(
    min_training_improvement=-1.0,
    min_training_epochs=0,
    min_seed_gradient_ratio=0.0,
    min_shadowing_epochs=0,
    min_contribution=-1.0,
)


def _randomize(module: nn.Module, seed: int, std: float = 0.3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def _to_training(slot: SeedSlot) -> SeedSlot:
    slot.step_epoch()  # GERMINATED -> TRAINING
    assert slot.stage == SeedStage.TRAINING
    return slot


def _to_blending(slot: SeedSlot, alpha: float) -> SeedSlot:
    _to_training(slot).step_epoch()  # TRAINING -> BLENDING through G2 (open gates)
    assert slot.stage == SeedStage.BLENDING
    slot.set_alpha(alpha)
    return slot


# ---------------------------------------------------------------- models written without Esper
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(0.1))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Blocks in a ModuleList; forward takes keyword arguments and returns a dict."""

    def __init__(self, vocab: int = 17, dim: int = 16, heads: int = 2, layers: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> dict[str, Tensor]:
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, mask=attention_mask)
        hidden = self.norm(x)
        return {"logits": self.head(hidden), "hidden": hidden}


class TwoBranchNet(nn.Module):
    """A stem, two parallel branches with different widths, a residual and a tuple output."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.left = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(8, 12, 1), nn.ReLU(), nn.Conv2d(12, 8, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        self.pair = nn.LSTM(8, 8, batch_first=True)  # returns a tuple; never a valid target

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.stem(x)
        h = h + self.left(h) + self.right(h)
        features = self.pool(h).flatten(1)
        return self.fc(features), features


def _gpt_inputs(batch: int = 2, length: int = 6) -> dict[str, Tensor]:
    ids = torch.randint(0, 17, (batch, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones(length, length, dtype=torch.bool).tril()}


def _images(batch: int = 4) -> Tensor:
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _gpt() -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT()


# ---------------------------------------------------------------- targets
def test_star_stays_within_one_dotted_component() -> None:
    grafted = esper.graft(_gpt(), ["blocks.*"], _gpt_inputs())
    assert list(grafted.seed_slots) == ["blocks.0", "blocks.1", "blocks.2"]
    deeper = esper.graft(_gpt(), ["blocks.*.mlp", "blocks.?.attn.out"], _gpt_inputs())
    assert list(deeper.seed_slots) == [
        "blocks.0.attn.out", "blocks.0.mlp", "blocks.1.attn.out", "blocks.1.mlp",
        "blocks.2.attn.out", "blocks.2.mlp",
    ]


def test_seed_slots_follow_the_models_order_not_the_targets() -> None:
    grafted = esper.graft(_gpt(), ["head", "blocks.2", "embed", "blocks.0"], _gpt_inputs())
    assert list(grafted.seed_slots) == ["embed", "blocks.0", "blocks.2", "head"]
    assert all(slot.slot_id == name for name, slot in grafted.seed_slots.items())
    single = esper.graft(_gpt(), "blocks.1", _gpt_inputs())  # one name as a plain string
    assert list(single.seed_slots) == ["blocks.1"]


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (["blocks.5"], r"Unknown target 'blocks\.5'.*closest module names: blocks\.\d"),
        (["bloks.1.mlp"], r"Unknown target 'bloks\.1\.mlp'.*closest module names: blocks\.1\.mlp"),
        (["zzz"], r"Unknown target 'zzz'.*top-level modules: embed, blocks, norm, head"),
        (["blocks.*.ffn"], r"Target pattern 'blocks\.\*\.ffn' matches no module"),
        (["blocks.1", "blocks.1"], r"Duplicate target 'blocks\.1': named by 'blocks\.1' twice"),
        (["blocks.*", "blocks.2"], r"Duplicate target 'blocks\.2': named by 'blocks\.\*' and 'blocks\.2'"),
        ([], r"at least one target"),
    ],
)
def test_bad_targets_are_named(targets: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        esper.graft(_gpt(), targets, _gpt_inputs())


def test_one_module_under_two_names_is_a_duplicate() -> None:
    model = _gpt()
    model.last = model.blocks[2]  # the same module registered twice
    with pytest.raises(ValueError, match=r"'blocks\.2' and 'last' are the same module"):
        esper.graft(model, ["blocks.2", "last"], _gpt_inputs())


def test_a_model_is_grafted_once() -> None:
    model = _gpt()
    esper.graft(model, ["blocks.1"], _gpt_inputs())
    for targets in (["blocks.*"], ["blocks.0"]):  # the grafted target again, or another one
        with pytest.raises(ValueError, match=r"The model was grafted before \(slots on blocks\.1\)"):
            esper.graft(model, targets, _gpt_inputs())


def test_targets_whose_output_cannot_take_a_slot_are_named() -> None:
    model = TwoBranchNet()
    with pytest.raises(ValueError, match=r"Target 'pair' \(LSTM\) did not run"):
        esper.graft(model, ["pair"], _images())

    class Pairs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(4, 4, batch_first=True)
            self.argmax = ArgMax()
            self.flat = nn.Flatten(0)

        def forward(self, x: Tensor) -> Tensor:
            out, _ = self.lstm(x)
            return self.flat(out) + self.argmax(out).sum()

    class ArgMax(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.argmax(-1)

    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"Target 'lstm' \(LSTM\) returns tuple of 2 \(Tensor\(2, 3, 4\), tuple"):
        esper.graft(Pairs(), ["lstm"], x)
    with pytest.raises(ValueError, match=r"'flat' \(Flatten\) returns a torch.float32 tensor of shape \(24,\)"):
        esper.graft(Pairs(), ["flat"], x)
    with pytest.raises(ValueError, match=r"'argmax' \(ArgMax\) returns a torch.int64 tensor"):
        esper.graft(Pairs(), ["argmax"], x)


def test_a_target_called_with_different_widths_is_refused() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act = nn.ReLU()
            self.wide = nn.Linear(4, 8)

        def forward(self, x: Tensor) -> Tensor:
            return self.act(self.wide(self.act(x)))

    with pytest.raises(ValueError, match=r"'act' \(ReLU\) runs 2 times per forward with different outputs"):
        esper.graft(Shared(), ["act"], torch.randn(3, 4))


def test_bad_example_input_and_model_get_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"probe forward of example_input through TinyGPT failed"):
        esper.graft(_gpt(), ["blocks.0"], torch.randn(2, 6))  # floats into an Embedding
    with pytest.raises(TypeError, match="needs a torch.nn.Module"):
        esper.graft(lambda x: x, ["blocks.0"], torch.randn(2, 6))


# ---------------------------------------------------------------- topology and width
def test_topology_width_device_and_dtype_come_from_the_probe() -> None:
    torch.manual_seed(0)
    model = TwoBranchNet()
    grafted = esper.graft(model, ["stem", "right.0", "fc", "pool"], _images())
    slots = grafted.seed_slots
    assert (slots["stem"].task_config.topology, slots["stem"].channels) == ("cnn", 8)
    assert (slots["right.0"].task_config.topology, slots["right.0"].channels) == ("cnn", 12)
    assert (slots["fc"].task_config.topology, slots["fc"].channels) == ("mlp", 5)
    assert (slots["pool"].task_config.topology, slots["pool"].channels) == ("cnn", 8)  # (B, 8, 1, 1)
    gpt = esper.graft(_gpt(), ["blocks.1", "head"], _gpt_inputs())
    assert {k: (s.task_config.topology, s.channels) for k, s in gpt.seed_slots.items()} == {
        "blocks.1": ("transformer", 16),
        "head": ("transformer", 17),
    }
    assert all(s.device == torch.device("cpu") and s.dtype == torch.float32 for s in slots.values())
    state = grafted.germinate("right.0", "conv_light")
    assert state.stage == SeedStage.GERMINATED and state.slot_id == "right.0"
    assert grafted.seed_slots["right.0"].seed.conv.in_channels == 12


def test_seeds_are_built_on_the_device_of_the_features() -> None:
    """The meta device stands in for an accelerator: the slot and its seed follow the probe."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).to("meta")
    grafted = esper.graft(model, ["1"], torch.randn(3, 4, device="meta"))
    slot = grafted.seed_slots["1"]
    assert slot.device == torch.device("meta")
    grafted.germinate("1", "mlp")
    assert {p.device.type for p in slot.seed.parameters()} == {"meta"}
    assert grafted(torch.randn(3, 4, device="meta")).shape == (3, 2)


def test_the_probe_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = TwoBranchNet().train()
    model.left.eval()  # a mixed train/eval model keeps each module's own flag
    state = copy.deepcopy(model.state_dict())
    esper.graft(model, ["stem", "left"], _images())
    assert model.training and not model.left.training and model.stem[1].training
    for key, value in model.state_dict().items():  # BatchNorm statistics untouched
        assert torch.equal(value, state[key]), key


def test_germinate_unknown_slot_or_blueprint_is_a_clear_error() -> None:
    grafted = esper.graft(_gpt(), ["blocks.0"], _gpt_inputs())
    with pytest.raises(ValueError, match=r"Unknown slot 'blocks\.9'. Available: blocks\.0"):
        grafted.germinate("blocks.9", "lora")
    with pytest.raises(ValueError, match=r"Unknown blueprint 'conv_light' for topology 'transformer'"):
        grafted.germinate("blocks.0", "conv_light")


# ---------------------------------------------------------------- identity and training
def _train_step(model: nn.Module, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    torch.manual_seed(7)  # dropout draws the same mask in both models
    out = model(**inputs)
    return {key: value.detach() for key, value in out.items()} | {"loss": out["logits"].square().mean()}


def test_output_is_bitwise_identical_while_dormant_or_training() -> None:
    """Keyword arguments in, a dict out: the grafted model is called and answers like the model."""
    model = _gpt()
    reference = copy.deepcopy(model)
    grafted = esper.graft(model, ["blocks.*", "norm"], _gpt_inputs())
    inputs = _gpt_inputs()
    for mode in (True, False):  # train mode (dropout, the STE path) and eval
        grafted.train(mode)
        reference.train(mode)
        got, expected = _train_step(grafted, inputs), _train_step(reference, inputs)
        assert got.keys() == expected.keys() == {"logits", "hidden", "loss"}
        assert all(torch.equal(got[key], expected[key]) for key in got)
    for i, key in enumerate(grafted.seed_slots):
        grafted.germinate(key, ["lora", "mlp", "attention", "norm"][i])
        _randomize(grafted.seed_slots[key].seed, seed=10 + i)
        _to_training(grafted.seed_slots[key])
    grafted.train()
    reference.train()
    got, expected = _train_step(grafted, inputs), _train_step(reference, inputs)
    assert all(torch.equal(got[key], expected[key]) for key in ("logits", "hidden"))
    # The incubating seeds still learn from the task loss (straight-through).
    model(**inputs)["logits"].square().mean().backward()
    for key, slot in grafted.seed_slots.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in slot.seed.parameters()), key


def test_a_blending_seed_changes_the_output_and_force_alpha_zero_restores_it() -> None:
    model = TwoBranchNet().eval()
    reference = copy.deepcopy(model)
    grafted = esper.graft(model, ["left", "fc"], _images(), gates=OPEN_GATES)
    grafted.germinate("left", "conv_light")
    _randomize(grafted.seed_slots["left"].seed, seed=3)
    slot = _to_blending(grafted.seed_slots["left"], 0.6)
    x = _images()
    logits, _ = grafted(x)
    assert not torch.equal(logits, reference(x)[0])
    with slot.force_alpha(0.0):  # the counterfactual: the host alone
        assert all(torch.equal(a, b) for a, b in zip(grafted(x), reference(x), strict=True))
    assert slot.alpha == 0.6


class LogitsOf(nn.Module):
    """The trainer's loss reads logits: keep the first of the wrapped model's outputs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[0]


def test_counterfactuals_on_a_grafted_model_match_force_alpha() -> None:
    torch.manual_seed(0)
    grafted = esper.graft(
        LogitsOf(TwoBranchNet()), ["net.left", "net.right", "net.stem"], _images(), gates=OPEN_GATES
    )
    for i, key in enumerate(("net.left", "net.stem")):
        grafted.germinate(key, "conv_heavy")
        _randomize(grafted.seed_slots[key].seed, seed=20 + i, std=0.5)
        _to_blending(grafted.seed_slots[key], 0.8)
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    grafted.eval()
    with torch.no_grad():
        targets = grafted(x).argmax(-1)  # labels the grown model gets all right
    result = validate_with_counterfactuals(grafted, [(x, targets)])
    assert result.accuracy == 1.0
    for key in ("net.left", "net.stem"):
        with grafted.seed_slots[key].force_alpha(0.0), torch.no_grad():
            alone = (grafted(x).argmax(-1) == targets).float().mean().item()
        assert result.contributions[key] == pytest.approx(1.0 - alone)
        assert grafted.seed_slots[key].state.metrics.counterfactual_contribution == result.contributions[key]
    assert all(value > 0 for value in result.contributions.values())
    assert set(result.contributions) == {"net.left", "net.stem"}  # "net.right" holds no seed


def test_bf16_model_germinates_and_trains() -> None:
    model = _gpt().to(torch.bfloat16)
    grafted = esper.graft(model, ["blocks.*"], _gpt_inputs())
    assert {slot.dtype for slot in grafted.seed_slots.values()} == {torch.bfloat16}
    for key in grafted.seed_slots:
        grafted.germinate(key, "mlp")
        _to_training(grafted.seed_slots[key])
    assert {p.dtype for p in grafted.seed_parameters()} == {torch.bfloat16}
    optimizer = torch.optim.SGD(grafted.parameters(), lr=0.1)
    inputs = _gpt_inputs()
    loss = F.cross_entropy(grafted(**inputs)["logits"].flatten(0, 1).float(), inputs["input_ids"].flatten())
    loss.backward()
    before = [p.detach().clone() for p in grafted.seed_parameters()]
    optimizer.step()
    assert math.isfinite(loss.item())
    assert any(not torch.equal(a, b) for a, b in zip(before, grafted.seed_parameters(), strict=True))


def test_compiles_fullgraph_with_training_and_blending_seeds() -> None:
    model = TwoBranchNet().eval()
    grafted = esper.graft(model, ["left", "right.1"], _images(), gates=OPEN_GATES)
    grafted.germinate("left", "depthwise")
    grafted.germinate("right.1", "conv_light")
    for i, key in enumerate(grafted.seed_slots):
        _randomize(grafted.seed_slots[key].seed, seed=40 + i)
    _to_training(grafted.seed_slots["left"])
    _to_blending(grafted.seed_slots["right.1"], 0.4)
    x = _images()
    compiled = torch.compile(grafted, fullgraph=True, backend="eager")
    for got, expected in zip(compiled(x), grafted(x), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- what the model keeps
def test_model_names_and_state_dict_are_unchanged_and_slots_are_owned_by_the_graft() -> None:
    model = _gpt()
    names = [name for name, _ in model.named_modules()]
    keys = list(model.state_dict())
    grafted = esper.graft(model, ["blocks.*"], _gpt_inputs())
    grafted.germinate("blocks.1", "lora")
    assert [name for name, _ in model.named_modules()] == names
    assert list(model.state_dict()) == keys  # a checkpoint of the model still loads into it
    assert grafted.host is model
    host_keys = [key for key in grafted.state_dict() if key.startswith("host.")]
    assert host_keys == [f"host.{key}" for key in keys]
    assert any(key.startswith("slots.blocks:1.seed.") for key in grafted.state_dict())
    host_ids = {id(p) for p in grafted.host_parameters()}
    seed_ids = {id(p) for p in grafted.seed_parameters()}
    assert host_ids == {id(p) for p in model.parameters()}
    assert seed_ids == {id(p) for p in grafted.seed_slots["blocks.1"].seed.parameters()}
    assert host_ids | seed_ids == {id(p) for p in grafted.parameters()}
    assert grafted.host_param_count() == sum(p.numel() for p in model.parameters())
    assert grafted.seed_param_count() == 2 * 16 * 8


def test_deepcopy_of_a_grafted_model_runs_its_own_slots() -> None:
    grafted = esper.graft(TwoBranchNet().eval(), ["left"], _images(), gates=OPEN_GATES)
    clone = copy.deepcopy(grafted)
    grafted.germinate("left", "conv_light")
    _randomize(grafted.seed_slots["left"].seed, seed=5)
    _to_blending(grafted.seed_slots["left"], 1.0)
    x = _images()
    assert not torch.equal(grafted(x)[0], clone(x)[0])
    with grafted.seed_slots["left"].force_alpha(0.0):
        assert torch.equal(grafted(x)[0], clone(x)[0])


# ---------------------------------------------------------------- the trainer on a grafted model
def _wine_batches(batch: int = 32) -> tuple[list, list]:
    from sklearn.datasets import load_wine

    data = load_wine()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
    return batches[1:], batches[:1]


def test_trainer_and_governor_run_a_grafted_mlp_on_tabular_features() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(13, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    train, val = _wine_batches()
    grafted = esper.graft(mlp, ["1", "3"], train[0][0], gates=OPEN_GATES)
    assert {k: s.task_config.topology for k, s in grafted.seed_slots.items()} == {"1": "mlp", "3": "mlp"}
    trainer = MorphogeneticTrainer(grafted, train, val, OptimConfig())
    first = trainer.run_epoch()
    trainer.end_epoch()
    trainer.apply([Action(ActionKind.GERMINATE, "1", "mlp"), Action(ActionKind.GERMINATE, "3", "lowrank")])
    assert trainer.optimizers.slot_order() == ["1", "3"]
    # The governor's snapshot holds the live seeds too (a rollback restores them with the
    # host), wherever the model keeps them.
    trainer.end_epoch()
    snapshot = trainer.governor._snapshot["model"]
    seed_keys = {key for key in grafted.state_dict() if key.startswith("slots.") and ".seed." in key}
    assert seed_keys and seed_keys <= set(snapshot)
    records = []
    for _ in range(4):
        records.append(trainer.run_epoch())
        trainer.end_epoch()
    assert all(r.rollback is None for r in records)
    assert records[-1].val_accuracy > first.val_accuracy and records[-1].train_loss < first.train_loss
    assert grafted.seed_slots["1"].stage in (SeedStage.BLENDING, SeedStage.SHADOWING, SeedStage.PROBATIONARY)
    assert "1" in records[-1].contributions  # counterfactuals measured per slot
    assert records[-1].seed_params == grafted.seed_param_count() > 0


def test_a_grafted_trainer_checkpoint_restores_seeds_and_optimisers() -> None:
    def build() -> tuple[nn.Module, MorphogeneticTrainer]:
        torch.manual_seed(0)
        mlp = nn.Sequential(nn.Linear(13, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 3))
        grafted = esper.graft(mlp, ["1", "2.1"], train[0][0], gates=OPEN_GATES)
        return grafted, MorphogeneticTrainer(grafted, train, val, OptimConfig())

    train, val = _wine_batches()
    grafted, trainer = build()
    trainer.apply([Action(ActionKind.GERMINATE, "2.1", "mlp")])
    for _ in range(3):
        trainer.run_epoch()
        trainer.end_epoch()
    buffer = io.BytesIO()  # through a checkpoint file's bytes, as a resumed run reads it
    torch.save(trainer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert any(key.startswith("slots.2:1.seed.") for key in state["model"])

    restored, resumed = build()
    resumed.load_state_dict(state)
    slot = restored.seed_slots["2.1"]
    assert slot.stage == grafted.seed_slots["2.1"].stage and slot.seed_topology == "mlp"
    restored.eval()
    grafted.eval()
    assert torch.equal(restored(val[0][0]), grafted(val[0][0]))
    assert resumed.run_epoch().to_dict() | {"seconds": 0} == trainer.run_epoch().to_dict() | {"seconds": 0}


def test_a_grafted_mlp_trains_exactly_like_the_built_in_host() -> None:
    """One way to place a slot: the same network as MLPHost, grafted, gives the same run."""
    from esper.kasmina.host import MLPHost, MorphogeneticModel

    train, val = _wine_batches()

    def built_in() -> tuple[nn.Module, str]:
        return MorphogeneticModel(MLPHost(13, num_classes=3, hidden=8), gates=OPEN_GATES), "layer2"

    def grafted() -> tuple[nn.Module, str]:
        # The layers MLPHost creates, in the same order: the same initial weights.
        mlp = nn.Sequential(nn.Linear(13, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 3))
        return esper.graft(mlp, ["1", "2"], train[0][0], gates=OPEN_GATES), "2"

    runs = []
    for build in (built_in, grafted):
        torch.manual_seed(0)
        model, second_slot = build()
        trainer = MorphogeneticTrainer(model, train, val, OptimConfig())
        trainer.apply([Action(ActionKind.GERMINATE, second_slot, "mlp")])
        figures = []
        for _ in range(4):
            record = trainer.run_epoch()
            trainer.end_epoch()
            figures += [record.train_loss, record.val_loss, record.val_accuracy, record.seed_params]
        assert model.seed_slots[second_slot].stage == SeedStage.BLENDING
        runs.append(figures)
    # Equal up to the order in which gradient norms are summed for clipping.
    assert runs[0] == pytest.approx(runs[1], rel=1e-6, abs=0)
