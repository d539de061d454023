"""--device and --precision: device checks, autocast and loss scaling in the trainer, batches on the device."""

from __future__ import annotations

import io
import math

import pytest
import torch
from seed_lifecycle import grow
from torch import Tensor, nn

import esper
from esper.kasmina.blueprints import BlueprintRegistry
from esper.leyline import Action, ActionKind, SeedStage
from esper.runtime import InMemoryLoader, get_task
from esper.runtime.session import build_trainer
from esper.tolaria.precision import FP32, Precision, resolve_device
from esper.tolaria.trainer import _read_back


# --------------------------------------------------------------------------- devices
def test_cpu_is_always_there_and_a_missing_device_says_what_is() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda:1' is not available: .*use --device cpu"):
            resolve_device("cuda:1")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="device 'mps' is not available"):
            resolve_device("mps")


def test_precisions_and_what_each_needs() -> None:
    assert FP32.autocast_dtype is None and FP32.grad_scaler() is None
    assert Precision("bf16").autocast_dtype == torch.bfloat16 and Precision("bf16").grad_scaler() is None
    assert isinstance(Precision("fp16-mixed").grad_scaler(), torch.amp.GradScaler)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        Precision("fp8")


def test_loaders_hand_out_batches_on_their_device() -> None:
    loader = InMemoryLoader(torch.randn(10, 3), torch.arange(10), 4, shuffle=True, seed=0, device=torch.device("meta"))
    batches = list(loader)
    assert len(batches) == 3 and all(x.device.type == "meta" and y.device.type == "meta" for x, y in batches)
    assert loader.inputs.device.type == "cpu"  # the data stays where it is


def test_epoch_totals_come_back_exactly_in_one_read() -> None:
    count, values = _read_back(torch.tensor(2**40 + 3), torch.tensor([0.1, -2.5, math.inf]))
    assert count == 2**40 + 3 and values == [torch.tensor(0.1).item(), -2.5, math.inf]


# --------------------------------------------------------------------------- autocast in the trainer
def _trainer(precision: str, seed: int = 0):
    return build_trainer(get_task("digits"), get_task("digits").load_data(), seed, precision=precision)


def _conv_dtypes(trainer) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    first_conv = trainer.model.host.blocks[0].conv
    first_conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("precision", ["bf16", "fp16-mixed"])
def test_autocast_trains_a_growing_host_on_cpu(precision: str) -> None:
    trainer = _trainer(precision)
    seen = _conv_dtypes(trainer)
    first = trainer.run_epoch()
    trainer.end_epoch()
    trainer.apply([Action(ActionKind.GERMINATE, "block2", "conv_light")])
    trainer.end_epoch()  # GERMINATED -> TRAINING
    for _ in range(4):
        record = trainer.run_epoch()
        trainer.end_epoch()
    low = torch.bfloat16 if precision == "bf16" else torch.float16
    assert set(seen) == {low}  # the convolutions ran in the low precision...
    params = [*trainer.model.host_parameters(), *trainer.model.seed_parameters()]
    assert {p.dtype for p in params} == {torch.float32}  # ...the weights stay float32
    assert all(math.isfinite(x) for x in (record.train_loss, record.val_loss))
    assert record.val_accuracy > first.val_accuracy and record.rollback is None
    assert trainer.model.seed_slots["block2"].stage in (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.SHADOWING)
    assert (trainer.scaler is not None) == (precision == "fp16-mixed")


def test_fp16_mixed_scales_the_loss_and_resumes_exactly() -> None:
    trainer = _trainer("fp16-mixed")
    trainer.apply([Action(ActionKind.GERMINATE, "block2", "norm")])
    for _ in range(2):
        trainer.run_epoch()
        trainer.end_epoch()
    assert trainer.scaler.get_scale() == 65536.0  # no overflow on this task: the scale held
    buffer = io.BytesIO()
    torch.save(trainer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert "scaler" in state
    resumed = _trainer("fp16-mixed")  # the same run (data order), as a resumed job builds it...
    with torch.no_grad():
        for param in resumed.model.parameters():
            param.add_(1.0)  # ...but weights the checkpoint must override
    resumed.load_state_dict(state)
    assert resumed.scaler.get_scale() == 65536.0
    assert resumed.run_epoch().to_dict() | {"seconds": 0} == trainer.run_epoch().to_dict() | {"seconds": 0}


def test_autocast_counterfactuals_match_the_naive_path() -> None:
    from esper.tolaria.trainer import validate_with_counterfactuals

    trainer = _trainer("bf16")
    for key in trainer.model.seed_slots:
        grow(trainer.model.seed_slots[key], SeedStage.BLENDING, "conv_light", host_module=trainer.model.host)
        trainer.model.seed_slots[key].set_alpha(0.5)
    bf16 = trainer.precision
    fast = validate_with_counterfactuals(trainer.model, trainer.val_loader, precision=bf16)
    naive = validate_with_counterfactuals(trainer.model, trainer.val_loader, naive=True, precision=bf16)
    assert fast.contributions == naive.contributions and fast.accuracy == naive.accuracy


class Upcast(nn.Module):
    """A seed whose output comes out float32 whatever its input (a norm layer under autocast on CUDA)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.float() * 1.5


@pytest.fixture
def upcast_blueprint():
    BlueprintRegistry.register("test_upcast", "mlp", param_estimate=0)(lambda dim: Upcast())
    try:
        yield "test_upcast"
    finally:
        BlueprintRegistry.unregister("mlp", "test_upcast")


@pytest.mark.parametrize("stage", [SeedStage.TRAINING, SeedStage.BLENDING], ids=lambda s: s.name)
def test_a_seed_never_changes_the_dtype_the_host_computes_in(upcast_blueprint: str, stage: SeedStage) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 3))
    grown = esper.graft(model, ["0"], torch.zeros(2, 6))
    slot = grown.seed_slots["0"]
    grow(slot, stage, upcast_blueprint, host_module=grown.host)
    seen: list[torch.dtype] = []
    model[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grown(torch.randn(4, 6)).float().sum().backward()
    assert seen == [torch.bfloat16]  # the slot hands on the host's bf16, blended or not
