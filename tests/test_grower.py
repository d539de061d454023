"""esper.Grower: Esper's growth in a training loop the user writes, on models written without Esper."""

from __future__ import annotations

import io
import math
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import epoch_signals
from torch import Tensor, nn

import esper
from esper.jobs.run_data import load_run
from esper.kasmina.slot import QualityGates
from esper.leyline import Action, ActionKind, EpochSignals, SeedStage
from esper.nissa import read_jsonl
from esper.simic.actions import ActionSpace
from esper.simic.features import FeatureLayout, RunningNorm
from esper.simic.networks import ActorCritic, NetworkConfig
from esper.simic.policy import policy_payload
from esper.simic.rewards import RewardConfig
from esper.tolaria import TrainingFailed

# The documentation page whose Grower example must run as written.
LIBRARY_PAGE = Path(__file__).resolve().parents[1] / "docs" / "library.md"
S = SeedStage
# Gates that let a seed through on schedule, except G2's gradient check, which must see the
# seed's gradients measured during the user's loop (the optimiser-step hook).
SCHEDULE_GATES = QualityGates(
    min_training_improvement=-1.0, min_training_epochs=1, min_shadowing_epochs=0, min_contribution=-1.0
)


# --------------------------------------------------------------------------- the user's side
def _digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
    return x[:640], y[:640], x[1400:], y[1400:]


TRAIN_X, TRAIN_Y, VAL_X, VAL_Y = _digits()


def _mlp(hidden: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@torch.no_grad()
def accuracy(model: nn.Module) -> float:
    model.eval()
    return (model(VAL_X).argmax(1) == VAL_Y).float().mean().item()


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> float:
    """A plain loop of the user's: its own data order (a function of the epoch), loss and steps."""
    model.train()
    losses = []
    order = torch.randperm(len(TRAIN_X), generator=torch.Generator().manual_seed(epoch))
    for batch in order.split(64):
        loss = F.cross_entropy(model(TRAIN_X[batch]), TRAIN_Y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


class Script:
    """A controller that follows a plan: epoch -> actions; fossilizes whatever reaches PROBATIONARY."""

    def __init__(self, plan: dict[int, list[Action]]) -> None:
        self.plan = plan
        self.seen: list[EpochSignals] = []

    def decide(self, signals: EpochSignals) -> list[Action]:
        self.seen.append(signals)
        ready = [Action(ActionKind.FOSSILIZE, k) for k, r in signals.slots.items() if r and r.stage == S.PROBATIONARY]
        return self.plan.get(signals.epoch, []) + ready

    def state_dict(self) -> dict:
        return {"seen": len(self.seen)}

    def load_state_dict(self, state: dict) -> None:
        pass


def _seed_groups(optimizer: torch.optim.Optimizer) -> list[tuple[str, str, bool, float]]:
    """(slot, seed, fossil, lr) of each seed's param group in the user's optimiser."""
    return [(g["slot_id"], g["seed_id"], g["fossil"], g["lr"]) for g in optimizer.param_groups if "slot_id" in g]


# --------------------------------------------------------------------------- the documented example
def _documented_example() -> str:
    """The code block after docs/library.md's `<!-- grower example -->` marker."""
    text = LIBRARY_PAGE.read_text(encoding="utf-8")
    match = re.search(r"<!-- grower example -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert match, "docs/library.md lost its Grower example"
    return match.group(1)


def test_the_documented_example_runs_as_is_and_grows(capsys: pytest.CaptureFixture[str]) -> None:
    code = _documented_example()
    assert 25 <= len(code.strip().splitlines()) <= 45
    namespace: dict = {"__name__": "documented_example"}
    exec(compile(code, "docs/library.md", "exec"), namespace)  # noqa: S102 - the page's own code
    grower, grown, optimizer = namespace["grower"], namespace["grown"], namespace["optimizer"]
    assert len(grower.history) == namespace["EPOCHS"] and grower.closed
    moves = [move.to_stage for move in grower.transitions]
    assert S.GERMINATED in moves and S.FOSSILIZED in moves, moves
    # Each fossilized seed (in its slot's stack) stayed in the user's optimiser, as host, at the host's lr.
    fossils = [(k, f.seed_id) for k, slot in grown.seed_slots.items() for f in slot.fossil_reports]
    assert fossils and all((*key, True, 0.05) in _seed_groups(optimizer) for key in fossils)
    assert "epoch 39" in capsys.readouterr().out


# --------------------------------------------------------------------------- mechanics (MLP)
def test_seeds_join_the_users_optimiser_learn_pass_g2_and_leave_on_cull() -> None:
    grown = esper.graft(_mlp(), ["1", "3"], TRAIN_X[:2], gates=SCHEDULE_GATES)
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05, momentum=0.9)
    plan = {0: [Action(ActionKind.GERMINATE, "1", "mlp"), Action(ActionKind.GERMINATE, "3", "lowrank")]}
    grower = esper.Grower(grown, optimizer, accuracy, controller=Script(plan), epochs=8, seed_lr=0.02)
    record = grower.end_epoch(train_loss=train_one_epoch(grown, optimizer, 0))
    assert record.epoch == 0 and record.val_accuracy == accuracy(grown) and record.rollback is None
    assert _seed_groups(optimizer) == [("1", "1-seed1", False, 0.02), ("3", "3-seed1", False, 0.02)]
    assert grown.seed_slots["1"].stage == S.TRAINING  # germinated, then the lifecycle step
    seed = grown.seed_slots["1"].seed
    before = [p.detach().clone() for p in seed.parameters()]
    train_one_epoch(grown, optimizer, 1)  # the user's optimizer.step trains the seed
    assert any(not torch.equal(a, b) for a, b in zip(before, seed.parameters()))
    # Its gradient ratio was read during the user's steps: G2 lets it into BLENDING.
    grower.end_epoch()
    metrics = grown.seed_slots["1"].state.metrics
    assert metrics.seed_gradient_norm_ratio >= SCHEDULE_GATES.min_seed_gradient_ratio
    assert grown.seed_slots["1"].stage == S.BLENDING
    grower.controller.plan[2] = [Action(ActionKind.CULL, "3")]
    grower.end_epoch(train_loss=train_one_epoch(grown, optimizer, 2))
    assert grown.seed_slots["3"].stage == S.EMBARGOED and grown.seed_slots["3"].seed is None  # culled
    assert _seed_groups(optimizer) == [("1", "1-seed1", False, 0.02)]
    assert all(p in optimizer.state for p in grown.seed_slots["1"].seed.parameters())
    for epoch in range(3, 8):
        grower.end_epoch(train_loss=train_one_epoch(grown, optimizer, epoch))
    # Kept: the seed joined its slot's stack (the slot is free again) and its group stays, as host,
    # at the host's lr.
    assert [f.seed_id for f in grown.seed_slots["1"].fossil_reports] == ["1-seed1"]
    assert grown.seed_slots["1"].stage == S.DORMANT and grown.seed_slots["1"].seed is None
    assert _seed_groups(optimizer) == [("1", "1-seed1", True, 0.05)]
    assert grower.closed  # the 8 planned epochs are done
    with pytest.raises(RuntimeError, match="8 epochs this Grower planned are done"):
        grower.end_epoch()


def test_counterfactuals_are_the_score_without_each_seed() -> None:
    grown = esper.graft(_mlp(), ["1", "3"], TRAIN_X[:2], gates=SCHEDULE_GATES)
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05, momentum=0.9)
    plan = {0: [Action(ActionKind.GERMINATE, "1", "mlp"), Action(ActionKind.GERMINATE, "3", "mlp")]}
    grower = esper.Grower(grown, optimizer, accuracy, controller=Script(plan))
    for epoch in range(4):
        grower.end_epoch(train_loss=train_one_epoch(grown, optimizer, epoch))
    loss = train_one_epoch(grown, optimizer, 4)
    assert {s.stage for s in grown.seed_slots.values()} == {S.BLENDING}
    expected = {}
    for key, slot in grown.seed_slots.items():
        with slot.force_alpha(0.0):
            without = accuracy(grown)
        expected[key] = accuracy(grown) - without
    record = grower.end_epoch(train_loss=loss)
    assert record.contributions == pytest.approx(expected, abs=1e-9) and set(expected) == {"1", "3"}
    for key, slot in grown.seed_slots.items():
        assert slot.state.metrics.counterfactual_contribution == record.contributions[key]


def test_the_users_training_mode_survives_an_evaluate_that_switches_to_eval() -> None:
    grown = esper.graft(_mlp(), ["1"], TRAIN_X[:2])
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05)
    grower = esper.Grower(grown, optimizer, accuracy)
    grown.train()
    grower.end_epoch(train_loss=1.0)
    assert all(module.training for module in grown.modules())


# --------------------------------------------------------------------------- the GPT case
class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Blocks in a ModuleList; keyword arguments in, a dict out."""

    def __init__(self, vocab: int, dim: int = 32, heads: int = 2, layers: int = 2, context: int = 16) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, vocab))
        self.register_buffer("mask", torch.ones(context, context).triu(1).bool(), persistent=False)

    def forward(self, tokens: Tensor) -> dict[str, Tensor]:
        T = tokens.shape[1]
        x = self.tok(tokens) + self.pos.weight[:T]
        for block in self.blocks:
            x = block(x, mask=self.mask[:T, :T])
        return {"logits": self.head(x)}


def test_a_gpt_grows_in_the_users_loop_on_pydoc_text() -> None:
    from esper.runtime import load_pydoc_chars

    data = load_pydoc_chars(block_size=16)
    vocab = data.metadata["vocab_size"]
    train_x, train_y = data.train_inputs[:256], data.train_targets[:256]
    val_x, val_y = data.val_inputs[:64], data.val_targets[:64]
    torch.manual_seed(0)
    model = GPT(vocab)
    grown = esper.graft(model, ["blocks.*"], {"tokens": train_x[:2]}, gates=SCHEDULE_GATES)
    assert {k: s.task_config.topology for k, s in grown.seed_slots.items()} == {
        "blocks.0": "transformer", "blocks.1": "transformer"
    }
    optimizer = torch.optim.AdamW(grown.parameters(), lr=3e-3)

    @torch.no_grad()
    def minus_val_loss(m: nn.Module) -> float:  # higher is better
        m.eval()
        logits = m(tokens=val_x)["logits"]
        return -F.cross_entropy(logits.reshape(-1, vocab), val_y.reshape(-1)).item()

    plan = {0: [Action(ActionKind.GERMINATE, "blocks.1", "mlp")]}
    grower = esper.Grower(grown, optimizer, minus_val_loss, controller=Script(plan), epochs=6)
    first = None
    for epoch in range(6):
        grown.train()
        for batch in torch.randperm(len(train_x), generator=torch.Generator().manual_seed(epoch)).split(32):
            logits = grown(tokens=train_x[batch])["logits"]
            loss = F.cross_entropy(logits.reshape(-1, vocab), train_y[batch].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        record = grower.end_epoch(train_loss=loss.item())
        first = first if first is not None else record
    # The score is minus the validation loss; the governor watches that loss.
    assert record.val_loss == -record.val_accuracy > 0 and record.val_loss < first.val_loss
    slot = grown.seed_slots["blocks.1"]
    assert slot.stage in (S.BLENDING, S.SHADOWING, S.PROBATIONARY, S.FOSSILIZED)
    assert record.seed_params == sum(p.numel() for p in slot.seed.parameters()) > 0
    assert "blocks.1" in record.contributions


# --------------------------------------------------------------------------- governor
def test_a_seed_that_breaks_the_evaluation_is_found_culled_and_rolled_back() -> None:
    grown = esper.graft(_mlp(), ["1", "3"], TRAIN_X[:2], gates=SCHEDULE_GATES)
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05, momentum=0.9)
    plan = {0: [Action(ActionKind.GERMINATE, "1", "mlp"), Action(ActionKind.GERMINATE, "3", "mlp")]}
    grower = esper.Grower(grown, optimizer, accuracy, controller=Script(plan))
    for epoch in range(4):
        grower.end_epoch(train_loss=train_one_epoch(grown, optimizer, epoch))
    assert grown.seed_slots["3"].stage == S.BLENDING
    good = {k: v.clone() for k, v in grown.state_dict().items() if isinstance(v, torch.Tensor)}  # the weights
    train_one_epoch(grown, optimizer, 4)
    with torch.no_grad():  # the seed in slot 3 diverged in the user's last step
        next(grown.seed_slots["3"].seed.parameters()).fill_(math.inf)
    record = grower.end_epoch(train_loss=math.nan)
    assert record.rollback is not None and "healthy without 3-seed1 (mlp in 3)" in record.rollback
    assert grown.seed_slots["3"].seed is None and grown.seed_slots["1"].stage == S.BLENDING  # culled
    assert [k for k, _, _, _ in _seed_groups(optimizer)] == ["1"]
    restored = grown.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in good.items() if k in restored)
    assert math.isfinite(record.val_accuracy)  # measured again, on the restored model


def test_a_fault_no_rollback_cures_stops_the_run_with_a_failed_summary(tmp_path: Path) -> None:
    grown = esper.graft(_mlp(), ["1"], TRAIN_X[:2])
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05)
    grower = esper.Grower(grown, optimizer, accuracy, epochs=10, run_dir=tmp_path / "run")
    grower.end_epoch(train_loss=math.nan)  # the user's loop diverges every epoch, whatever is rolled back
    grower.end_epoch(train_loss=math.nan)
    with pytest.raises(TrainingFailed, match="growing failed at epoch 2: 3 consecutive rollbacks"):
        grower.end_epoch(train_loss=math.nan)
    run = load_run(tmp_path / "run")
    assert run.failed and run.mode == "grower" and run.done == 3


# --------------------------------------------------------------------------- run folder
def _run(tmp_path: Path, epochs: int, stop_after: int | None = None, resume: bool = False) -> tuple:
    grown = esper.graft(_mlp(), ["1", "3"], TRAIN_X[:2], gates=SCHEDULE_GATES)
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05, momentum=0.9)
    plan = {1: [Action(ActionKind.GERMINATE, "3", "mlp")]}
    grower = esper.Grower(grown, optimizer, accuracy, controller=Script(plan), epochs=epochs,
                          run_dir=tmp_path, resume=resume, checkpoint_every=2)  # fmt: skip
    for epoch in range(grower.epoch, stop_after or epochs):
        grower.end_epoch(train_loss=train_one_epoch(grown, optimizer, epoch))
    return grower, grown


def test_a_run_folder_that_esper_report_reads(tmp_path: Path) -> None:
    from esper.jobs.html_report import write_report

    grower, grown = _run(tmp_path / "run", epochs=6)
    assert grower.closed and all(slot.on_telemetry is None for slot in grown.seed_slots.values())
    run = load_run(tmp_path / "run")
    assert run.complete and run.mode == "grower" and run.task == "Sequential (own loop)"
    assert run.done == run.planned == 6 and not run.missing
    assert run.summary["seeds"]["germinated"] == 1 and run.summary["params_added"] > 0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "epoch_0002.pt", "epoch_0004.pt", "epoch_0006.pt", "final.pt"
    ]
    assert any(e["event_type"] == "seed_germinated" for e in read_jsonl(tmp_path / "run" / "events.jsonl"))
    assert write_report([tmp_path / "run"]).exists()


def test_resume_continues_exactly_where_an_interrupted_run_stopped(tmp_path: Path) -> None:
    _run(tmp_path / "whole", epochs=6)
    grower, _ = _run(tmp_path / "cut", epochs=6, stop_after=5)  # killed during epoch 5
    grower.hub.close()
    resumed, _ = _run(tmp_path / "cut", epochs=6, resume=True)
    assert resumed.history[0].epoch == 4  # from the epoch-4 checkpoint

    def lines(name: str) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(tmp_path / name / "metrics.jsonl")]

    assert lines("cut") == lines("whole")


def test_a_new_grower_refuses_a_folder_that_holds_a_run(tmp_path: Path) -> None:
    _run(tmp_path / "run", epochs=2)
    with pytest.raises(FileExistsError, match="pass resume=True"):
        _run(tmp_path / "run", epochs=2)


# --------------------------------------------------------------------------- a policy
def _policy(tmp_path: Path, slots: tuple[str, ...], blueprints: tuple[str, ...], favourite: str) -> Path:
    layout, space = FeatureLayout(slots, blueprints), ActionSpace(slots, blueprints)
    model = ActorCritic(layout.size, len(space), NetworkConfig())
    with torch.no_grad():
        model.policy.bias[space.names().index(favourite)] = 100.0  # its one idea, when possible
    payload = policy_payload(model, RunningNorm(layout.size), layout, space, task="mnist5k-mlp",
                             round=0, episode_length=7, reward=asdict(RewardConfig()))  # fmt: skip
    path = tmp_path / "policy.pt"
    torch.save(payload, path)
    return path


def test_a_policy_drives_the_grafted_slots_in_order(tmp_path: Path) -> None:
    path = _policy(tmp_path, ("layer1", "layer2"), ("norm", "lowrank", "mlp"), "GERMINATE layer2 lowrank")
    grown = esper.graft(_mlp(), ["1", "3"], TRAIN_X[:2])
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05)
    grower = esper.Grower(grown, optimizer, accuracy, controller=path)
    assert grower.epochs == 7  # the policy's episode length
    grower.end_epoch(train_loss=train_one_epoch(grown, optimizer, 0))
    assert grown.seed_slots["3"].state.blueprint_id == "lowrank" and grown.seed_slots["1"].state is None


def test_a_policy_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    grown = esper.graft(_mlp(), ["1", "3"], TRAIN_X[:2])
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05)
    one_slot = _policy(tmp_path, ("layer1",), ("norm", "mlp"), "WAIT")
    with pytest.raises(ValueError, match="controls 1 slot.*has 2"):
        esper.Grower(grown, optimizer, accuracy, controller=one_slot)
    cnn = _policy(tmp_path, ("a", "b"), ("norm", "conv_light"), "WAIT")
    with pytest.raises(ValueError, match="not all mlp blueprints"):
        esper.Grower(grown, optimizer, accuracy, controller=cnn)


# --------------------------------------------------------------------------- mistakes
def test_mistakes_get_one_clear_error() -> None:
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(TypeError, match=r"esper.graft\(model, targets, example_input\)"):
        esper.Grower(model, optimizer, accuracy)
    grown = esper.graft(model, ["1"], TRAIN_X[:2])
    with pytest.raises(FileNotFoundError, match="neither 'heuristic' nor a policy file"):
        esper.Grower(grown, optimizer, accuracy, controller="heuristc")
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        esper.Grower(grown, optimizer, accuracy, epochs=0)
    with pytest.raises(ValueError, match="Unknown blueprint"):
        esper.Grower(grown, optimizer, accuracy, blueprints=["conv_light"])
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        esper.Grower(grown, "sgd", accuracy)
    grower = esper.Grower(grown, optimizer, lambda m: "great")
    with pytest.raises(TypeError, match="must return one number"):
        grower.end_epoch()


def test_a_seed_planted_before_the_grower_joins_the_optimiser_once() -> None:
    grown = esper.graft(_mlp(), ["1", "3"], TRAIN_X[:2])
    grown.germinate("1", "mlp")
    optimizer = torch.optim.SGD(grown.host_parameters(), lr=0.05)
    esper.Grower(grown, optimizer, accuracy, controller=Script({})).close()
    assert _seed_groups(optimizer) == [("1", "1-seed1", False, 0.05)]
    twice = torch.optim.SGD(grown.parameters(), lr=0.05)  # the seed's parameters already in it
    with pytest.raises(ValueError, match="already holds parameters of the seed in slot '1'"):
        esper.Grower(grown, twice, accuracy, controller=Script({}))


def test_slots_of_several_topologies_need_a_controller_that_knows_them() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4, 10)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(self.conv(x).mean(dim=(2, 3)))

    grown = esper.graft(Mixed(), ["conv", "fc"], torch.randn(2, 1, 8, 8))
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05)
    with pytest.raises(ValueError, match="one topology; these are conv: cnn, fc: mlp"):
        esper.Grower(grown, optimizer, accuracy)
    esper.Grower(grown, optimizer, accuracy, controller=Script({}))  # its own business


def test_a_bf16_model_grows_in_the_users_loop() -> None:
    grown = esper.graft(_mlp().bfloat16(), ["1"], TRAIN_X[:2].bfloat16(), gates=SCHEDULE_GATES)
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05)

    @torch.no_grad()
    def bf16_accuracy(m: nn.Module) -> float:
        return (m(VAL_X.bfloat16()).argmax(1) == VAL_Y).float().mean().item()

    grower = esper.Grower(grown, optimizer, bf16_accuracy, controller=Script({0: [Action(ActionKind.GERMINATE, "1", "mlp")]}))
    for epoch in range(4):
        grown.train()
        for batch in torch.randperm(len(TRAIN_X), generator=torch.Generator().manual_seed(epoch)).split(64):
            loss = F.cross_entropy(grown(TRAIN_X[batch].bfloat16()).float(), TRAIN_Y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        grower.end_epoch(train_loss=loss.item())
    slot = grown.seed_slots["1"]
    assert slot.stage == S.BLENDING and {p.dtype for p in slot.seed.parameters()} == {torch.bfloat16}
    assert math.isfinite(grower.history[-1].val_accuracy)


# --------------------------------------------------------------------------- stacks and FLOPs
def _until_fossilized(grower: esper.Grower, grown: nn.Module, optimizer: torch.optim.Optimizer, slot_id: str) -> None:
    """End the user's epochs until the slot's live seed has joined its stack."""
    slot = grown.seed_slots[slot_id]
    depth = slot.stack_depth
    for _ in range(12):
        grower.end_epoch(train_loss=train_one_epoch(grown, optimizer, grower.epoch))
        if slot.stack_depth > depth:
            return
    raise AssertionError(f"the seed in slot {slot_id} was not fossilized within 12 epochs")


def _two_group_optimizer(grown: nn.Module) -> torch.optim.Optimizer:
    """A user's optimiser with two groups of its own (weights with decay, the rest without)."""
    decay = [p for n, p in grown.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in grown.named_parameters() if not n.endswith("weight")]
    return torch.optim.SGD([{"params": decay, "weight_decay": 1e-4}, {"params": rest}], lr=0.05, momentum=0.9)


def test_a_fossil_stays_in_the_users_optimiser_and_a_second_seed_stacks_on_it() -> None:
    grown = esper.graft(_mlp(), ["1", "3"], TRAIN_X[:2], gates=SCHEDULE_GATES)
    optimizer = _two_group_optimizer(grown)
    grower = esper.Grower(grown, optimizer, accuracy, controller=Script({0: [Action(ActionKind.GERMINATE, "1", "mlp")]}),
                          fossil_lr=0.01)  # fmt: skip
    _until_fossilized(grower, grown, optimizer, "1")
    slot = grown.seed_slots["1"]
    assert slot.state is None and [f.seed_id for f in slot.fossil_reports] == ["1-seed1"]
    assert _seed_groups(optimizer) == [("1", "1-seed1", True, 0.01)]
    # The slot is free: a second seed goes on top of the fossil, with a group of its own.
    grower.controller.plan[grower.epoch] = [Action(ActionKind.GERMINATE, "1", "lowrank")]
    grower.end_epoch(train_loss=train_one_epoch(grown, optimizer, grower.epoch))
    assert slot.state.seed_id == "1-seed2" and slot.stack_depth == 1
    assert _seed_groups(optimizer) == [("1", "1-seed1", True, 0.01), ("1", "1-seed2", False, 0.05)]
    # The fossil is host: the user's optimiser goes on training it, with its momentum.
    fossil = list(slot.fossils.parameters())
    before = [p.detach().clone() for p in fossil]
    train_one_epoch(grown, optimizer, grower.epoch)
    assert all(not torch.equal(a, b) for a, b in zip(before, fossil, strict=True))
    assert all("momentum_buffer" in optimizer.state[p] for p in fossil)

    # A rollback puts back the optimiser state of every group: the user's two (by position),
    # the fossil's and the live seed's (by seed).
    grower.end_epoch(train_loss=1.0)
    saved = {id(p): {k: v.clone() for k, v in optimizer.state[p].items()} for g in optimizer.param_groups for p in g["params"]}
    train_one_epoch(grown, optimizer, grower.epoch)
    record = grower.end_epoch(train_loss=math.nan)  # the user's epoch diverged
    assert record.rollback is not None and slot.state is not None  # a host fault: no seed to blame
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert torch.equal(optimizer.state[p]["momentum_buffer"], saved[id(p)]["momentum_buffer"])


def test_a_grower_with_a_stack_resumes_its_optimiser_groups_exactly() -> None:
    grown = esper.graft(_mlp(), ["1", "3"], TRAIN_X[:2], gates=SCHEDULE_GATES)
    optimizer = _two_group_optimizer(grown)
    grower = esper.Grower(grown, optimizer, accuracy, controller=Script({0: [Action(ActionKind.GERMINATE, "1", "mlp")]}))
    _until_fossilized(grower, grown, optimizer, "1")
    grower.controller.plan[grower.epoch] = [Action(ActionKind.GERMINATE, "1", "norm")]
    grower.end_epoch(train_loss=train_one_epoch(grown, optimizer, grower.epoch))
    saved = io.BytesIO()  # through bytes, as a checkpoint on disk
    torch.save(grower.state_dict(), saved)

    again = esper.graft(_mlp(), ["1", "3"], TRAIN_X[:2], gates=SCHEDULE_GATES)  # built the same way
    again_optimizer = _two_group_optimizer(again)
    resumed = esper.Grower(again, again_optimizer, accuracy, controller=Script({}))
    resumed.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    assert _seed_groups(again_optimizer) == _seed_groups(optimizer)
    assert again.seed_slots["1"].stack_depth == 1 and again.seed_slots["1"].state.seed_id == "1-seed2"
    epoch = grower.epoch
    train_one_epoch(grown, optimizer, epoch)
    train_one_epoch(again, again_optimizer, epoch)
    for (name, a), b in zip(grown.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, name  # weights, then the slots


# One sample's FLOPs through the 64-16-16-10 MLP: a multiply-add is 2. Training adds the
# backward: both gradients of the second and third layers, only the weight's of the first
# (the inputs need none).
MLP_INFERENCE = 2 * (64 * 16 + 16 * 16 + 16 * 10)
MLP_TRAINING = MLP_INFERENCE + 2 * 64 * 16 + 2 * (2 * 16 * 16 + 2 * 16 * 10)


def test_a_grower_counts_the_flops_of_the_users_loop() -> None:
    grown = esper.graft(_mlp(), ["1", "3"], TRAIN_X[:2])
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05)
    grower = esper.Grower(grown, optimizer, accuracy, controller=Script({}))
    train_one_epoch(grown, optimizer, 0)
    accuracy(grown)  # the user's own evaluation, outside `evaluate`: not the Grower's to count
    first = grower.end_epoch(train_loss=1.0).flops
    assert first.training == MLP_TRAINING * len(TRAIN_X)  # every sample the loop trained on
    assert first.validation == MLP_INFERENCE * len(VAL_X)  # the one evaluate pass
    assert first.inference_per_sample == MLP_INFERENCE and first.counterfactual == 0
    second = grower.end_epoch(train_loss=train_one_epoch(grown, optimizer, 1)).flops
    assert second.cumulative_training == 2 * first.training


def test_a_model_the_flops_meter_cannot_run_grows_without_flops(caplog: pytest.LogCaptureFixture) -> None:
    class ReadsValues(nn.Module):
        """A forward that reads a tensor's value: it cannot run on meta tensors."""

        def __init__(self) -> None:
            super().__init__()
            self.body = _mlp()

        def forward(self, x: Tensor) -> Tensor:
            scale = 1.0 if x.abs().max().item() < 1e6 else 0.0
            return self.body(x * scale)

    grown = esper.graft(ReadsValues(), ["body.1"], TRAIN_X[:2])
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05)
    grower = esper.Grower(grown, optimizer, accuracy, controller=Script({0: [Action(ActionKind.GERMINATE, "body.1", "mlp")]}))
    with caplog.at_level("WARNING", logger="esper.tolaria"):
        records = [grower.end_epoch(train_loss=train_one_epoch(grown, optimizer, epoch)) for epoch in range(3)]
    assert all(record.flops is None for record in records)
    assert grown.seed_slots["body.1"].stage in (S.TRAINING, S.BLENDING)  # it grows all the same
    (warning,) = [r.getMessage() for r in caplog.records if "FLOPs are not counted" in r.getMessage()]
    assert "cannot count the FLOPs of ReadsValues" in warning and ".item()" in warning
    assert len(warning.splitlines()) == 1


def test_a_policy_sees_stacks_and_budget_under_its_own_slot_names() -> None:
    from esper.grower import _RenamedSlots
    from esper.leyline import FossilReport

    class Policy:
        seen: EpochSignals

        def decide(self, signals: EpochSignals) -> list[Action]:
            self.seen = signals
            return [Action(ActionKind.GERMINATE, "layer2", "norm")]

    policy = Policy()
    renamed = _RenamedSlots(policy, {"1": "layer1", "3": "layer2"})
    fossil = FossilReport("1-seed1", "mlp", "1", 1000, 0.02, 5)
    signals = epoch_signals(6, host_params=1500, seed_params=1000, slots={"1": None, "3": None},
                            fossils={"1": [fossil], "3": []}, affordable={"1": [], "3": ["norm"]})  # fmt: skip
    (action,) = renamed.decide(signals)
    assert action.slot_id == "3"  # back to the grafted name
    assert policy.seen.affordable == {"layer1": [], "layer2": ["norm"]}
    assert [(f.slot_id, f.seed_id) for f in policy.seen.fossils["layer1"]] == [("layer1", "1-seed1")]


# --------------------------------------------------------------------------- the host's own layers
def test_a_built_in_host_widens_in_the_users_loop_where_the_loss_pushes_hardest() -> None:
    from esper.kasmina.host import MLPHost, MorphogeneticModel
    from esper.leyline import TaskConfig
    from esper.runtime.session import operators_for
    from esper.tamiyo import BlueprintRotation, HeuristicConfig, HeuristicController, TrackerConfig

    torch.manual_seed(0)
    clock = TaskConfig(topology="mlp", blending_epochs=2)
    grown = MorphogeneticModel(MLPHost(64, hidden=16, n_layers=2), gates=SCHEDULE_GATES, task_config=clock)
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05, momentum=0.9)
    blueprints = ["widen", "widen_half"]
    # The heuristic as `controller="heuristic"` builds it, made to grow at once and keep what it grew.
    always_short = TrackerConfig(warmup_epochs=1, progress_window=1, underfit_progress=1.0)
    config = HeuristicConfig(tracker=always_short, min_epochs_left=0, fossilize_above=-1.0, cull_below=-1.0)
    heuristic = HeuristicController(BlueprintRotation(blueprints), config, operators_for("mlp", blueprints))
    grower = esper.Grower(grown, optimizer, accuracy, controller=heuristic, blueprints=blueprints, epochs=10)
    germinated = None
    for epoch in range(10):
        loss = train_one_epoch(grown, optimizer, epoch)
        with torch.no_grad():  # the heuristic judges capacity by how well the network fits
            fit = (grown(TRAIN_X).argmax(1) == TRAIN_Y).float().mean().item()
        record = grower.end_epoch(train_loss=loss, train_accuracy=fit)
        live = {k: s.state.blueprint_id for k, s in grown.seed_slots.items() if s.state is not None}
        if germinated is None and live:
            (germinated,) = live
            assert live[germinated] == "widen"  # no budget: the doubling
            assert germinated == max(record.pressure, key=record.pressure.__getitem__)
        if germinated is not None and grown.seed_slots[germinated].widenings:
            break
    assert germinated is not None, "the heuristic planted no width seed"
    (merged,) = grown.seed_slots[germinated].widenings
    assert merged.width == 32 and grown.host.width_site(germinated).layer.out_features == 32
    # The user's loop goes on training the wider layer with the same optimiser.
    assert math.isfinite(train_one_epoch(grown, optimizer, 99))
    grower.close()
    assert grown.export()(VAL_X).shape == (len(VAL_X), 10)
