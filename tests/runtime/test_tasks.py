"""The task registry: lookup, options, and that every offline task trains a host."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from esper.runtime import tasks
from esper.runtime.tasks import get_task, list_tasks, register_task

BUILT_IN = {"digits", "mnist5k", "mnist5k-mlp", "cifar10", "pydoc-chars", "textfile", "tinystories"}


def test_all_built_in_tasks_are_registered():
    assert BUILT_IN <= {spec.name for spec in list_tasks()}
    for spec in list_tasks():
        line = spec.describe()
        assert "\n" not in line and line.startswith(spec.name)
        assert set(spec.slots) <= {"block2", "block3", "layer1", "layer2"}


def test_unknown_task_lists_the_available_ones():
    with pytest.raises(ValueError, match="digits"):
        get_task("imagenet")


def test_register_rejects_duplicates(monkeypatch):
    monkeypatch.setattr(tasks, "_TASKS", dict(tasks._TASKS))
    custom = dataclasses.replace(get_task("digits"), name="my-digits")
    assert register_task(custom) is custom
    assert get_task("my-digits") is custom
    with pytest.raises(ValueError, match="already registered"):
        register_task(custom)


def test_specs_are_frozen_and_validate_the_optimizer():
    spec = get_task("digits")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.epochs = 1
    with pytest.raises(ValueError, match="adamw"):
        dataclasses.replace(spec, optimizer="adam")


def test_unknown_option_lists_accepted_ones():
    with pytest.raises(ValueError, match="accepted: data_dir, download"):
        get_task("cifar10").load_data(path="x")
    with pytest.raises(ValueError, match="accepted: none"):
        get_task("digits").load_data(block_size=8)


def test_options_left_at_none_are_ignored():
    assert get_task("digits").load_data(data_dir=None).metadata["num_classes"] == 10


@pytest.fixture
def text_path(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("digits", {}),
        ("mnist5k", {}),
        ("mnist5k-mlp", {}),
        ("pydoc-chars", {}),
        ("textfile", {"block_size": 16}),
    ],
)
def test_task_host_maps_a_batch_to_the_right_shape(name, options, text_path):
    spec = get_task(name)
    if name == "textfile":
        options = {**options, "path": text_path}
    data = spec.load_data(**options)
    train, val = data.loaders(spec.batch_size, 0, spec.max_train_batches, spec.max_val_batches)
    if spec.max_train_batches is not None:
        assert len(train) <= spec.max_train_batches and len(val) <= spec.max_val_batches
    x, y = next(iter(train))
    host = spec.build_host(data)
    assert set(spec.slots) <= set(host.injection_points)
    out = host(x)
    if spec.topology in ("cnn", "mlp"):
        assert out.shape == (len(x), data.metadata["num_classes"])
    else:
        assert x.dtype == y.dtype == torch.int64
        assert out.shape == (*x.shape, data.metadata["vocab_size"])
    assert host.topology == spec.topology == spec.task_config.topology


def test_custom_task_with_plain_function_host_describes_itself(monkeypatch):
    monkeypatch.setattr(tasks, "_TASKS", dict(tasks._TASKS))

    def tiny_linear(data):
        return torch.nn.Linear(64, data.metadata["num_classes"])

    spec = register_task(
        dataclasses.replace(get_task("digits"), name="lin", build_host=tiny_linear)
    )
    assert "tiny_linear" in spec.describe()


def test_mlp_task_grows_an_mlp_seed():
    from esper.leyline import Action, ActionKind, SeedStage
    from esper.runtime.session import build_trainer

    spec = get_task("mnist5k-mlp")
    trainer = build_trainer(spec, spec.load_data(), seed=0)
    first = trainer.run_epoch()
    trainer.end_epoch()
    trainer.apply([Action(ActionKind.GERMINATE, "layer2", "mlp")])
    trainer.end_epoch()  # GERMINATED -> TRAINING
    slot = trainer.slots["layer2"]
    assert slot.stage == SeedStage.TRAINING and slot.seed_topology == "mlp"
    before = [p.detach().clone() for p in slot.seed.parameters()]
    second = trainer.run_epoch()
    assert any(not torch.equal(a, b) for a, b in zip(before, slot.seed.parameters(), strict=True))
    assert second.seed_params == slot.seed_param_count() > 0
    assert second.val_accuracy > first.val_accuracy > 0.5
