"""Masks allow exactly the physically possible actions, and masked actions are never sampled."""

import torch
from conftest import epoch_signals, seed_report
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.leyline import (
    ACTIVE_STAGES,
    ActionKind,
    EpochSignals,
    FossilReport,
    SeedReport,
    SeedStage,
)
from esper.simic.actions import MASKED_LOGIT, ActionSpace, apply_mask
from esper.simic.ppo import sample

SLOTS = ("block2", "block3")
BLUEPRINTS = ("norm", "attention", "conv_light")
# Stages a slot's live seed can be seen in; None is a slot without one (DORMANT). A fossilized
# seed is never seen there: it joins the slot's stack at once.
SEEN_STAGES = [None] + [s for s in SeedStage if s not in (SeedStage.UNKNOWN, SeedStage.DORMANT, SeedStage.FOSSILIZED)]


def signals_with(
    stages: dict[str, SeedStage | None], stacks: dict[str, int] | None = None, affordable: dict[str, list[str]] | None = None
) -> EpochSignals:
    def report(slot_id: str, stage: SeedStage) -> SeedReport:
        return seed_report(stage, seed_id=f"{slot_id}-seed", slot_id=slot_id, alpha=0.5, contribution=0.01)

    slots = {slot_id: None if stage is None else report(slot_id, stage) for slot_id, stage in stages.items()}
    fossils = {
        slot_id: [FossilReport(f"{slot_id}-fossil{i}", "norm", slot_id, 10, 0.01, i) for i in range(depth)]
        for slot_id, depth in (stacks or {}).items()
    }
    return epoch_signals(3, seed_params=10, slots=slots, fossils=fossils, affordable=affordable)


def expected_valid(
    space: ActionSpace, stages: dict[str, SeedStage | None], affordable: dict[str, list[str]] | None = None
) -> list[bool]:
    valid = []
    for action in space.actions:
        stage = stages.get(action.slot_id)
        within = affordable is None or action.blueprint_id in affordable.get(action.slot_id, [])
        valid.append(
            {
                ActionKind.WAIT: True,
                ActionKind.GERMINATE: stage is None and within,
                ActionKind.FOSSILIZE: stage == SeedStage.PROBATIONARY,
                ActionKind.CULL: stage in ACTIVE_STAGES,
            }[action.kind]
        )
    return valid


def test_layout_is_wait_then_germinate_pairs_then_fossilize_then_cull():
    space = ActionSpace(SLOTS, BLUEPRINTS)
    assert len(space) == 1 + len(SLOTS) * len(BLUEPRINTS) + 2 * len(SLOTS)
    names = space.names()
    assert names[0] == "WAIT"
    assert names[1] == "GERMINATE block2 norm"
    assert names[-1] == "CULL block3"


@settings(max_examples=200, deadline=None)
@given(
    stages=st.fixed_dictionaries({slot: st.sampled_from(SEEN_STAGES) for slot in SLOTS}),
    stacks=st.fixed_dictionaries({slot: st.integers(0, 3) for slot in SLOTS}),
    affordable=st.none() | st.fixed_dictionaries({slot: st.lists(st.sampled_from(BLUEPRINTS), unique=True) for slot in SLOTS}),
    logits=st.lists(st.floats(-20, 20), min_size=11, max_size=11),
    seed=st.integers(0, 2**31 - 1),
)
def test_masks_allow_exactly_the_possible_actions_and_only_those_are_sampled(stages, stacks, affordable, logits, seed):
    """A slot's stack never blocks a germination on top of it; the growth budget may."""
    space = ActionSpace(SLOTS, BLUEPRINTS)
    mask = space.mask(signals_with(stages, stacks, affordable))
    assert mask.tolist() == expected_valid(space, stages, affordable)
    if not mask[1:].any():
        return  # WAIT alone: nothing else to sample
    masked = apply_mask(torch.tensor(logits), mask)
    probs = torch.softmax(masked, dim=-1)
    assert torch.all(probs[~mask] == 0)
    assert torch.all(probs[mask] > 0)
    draws = sample(masked.expand(64, -1), torch.Generator().manual_seed(seed))
    assert mask[draws].all()


def test_every_valid_action_is_sampled_under_a_uniform_policy():
    space = ActionSpace(SLOTS, BLUEPRINTS)
    stages = {"block2": None, "block3": SeedStage.PROBATIONARY}
    mask = space.mask(signals_with(stages))
    draws = sample(apply_mask(torch.zeros(4000, len(space)), mask), torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == set(mask.nonzero().view(-1).tolist())


def test_masked_logits_keep_log_softmax_and_entropy_finite():
    mask = torch.tensor([True, False, False, True])
    logits = apply_mask(torch.randn(4, requires_grad=True), mask)
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum()
    entropy.backward()
    assert torch.isfinite(logp).all() and torch.isfinite(entropy)
    assert logits[1].item() == MASKED_LOGIT


def test_the_mask_allows_a_width_seed_only_where_the_slots_layer_can_widen():
    from seed_lifecycle import grow

    from esper.runtime import get_task
    from esper.runtime.session import build_trainer

    blueprints = ("residual_block", "widen", "widen_half")
    spec = get_task("digits")
    trainer = build_trainer(spec, spec.load_data(), seed=0, blueprints=blueprints)
    space = ActionSpace(("block2", "block3"), blueprints)

    def allowed() -> set[str]:
        signals = trainer.signals(trainer.run_epoch(), total_epochs=10)
        return {name for name, ok in zip(space.names(), space.mask(signals).tolist(), strict=True) if ok}

    assert {f"GERMINATE {s} {b}" for s in ("block2", "block3") for b in blueprints} <= allowed()
    # A branch kept in block2: its output now goes through a fossil of that width, so block2's
    # layer cannot widen; block3's still can, and block2 still takes branches.
    grow(trainer.slots["block2"], SeedStage.FOSSILIZED, "residual_block", host_module=trainer.model.host)
    trainer.end_epoch()
    now = allowed()
    assert "GERMINATE block2 widen" not in now and "GERMINATE block2 widen_half" not in now
    assert {"GERMINATE block2 residual_block", "GERMINATE block3 widen", "GERMINATE block3 widen_half"} <= now


def test_a_stack_is_plantable_only_after_a_transformer_block():
    from torch import nn

    import esper
    from esper.kasmina.host import MorphogeneticModel, TransformerHost

    gpt = MorphogeneticModel(TransformerHost(vocab_size=16, n_embd=16, n_head=2, n_layer=1, block_size=8), ["layer1"])
    assert gpt.seed_slots["layer1"].plant_refusal("stack", gpt.host) is None
    tokens = torch.zeros(2, 8, dtype=torch.long)
    model = nn.Sequential(nn.Embedding(16, 16), nn.Linear(16, 16), nn.Linear(16, 16))
    grafted = esper.graft(model, ["1"], tokens)
    why = grafted.seed_slots["1"].plant_refusal("stack", grafted.host)
    assert why is not None and "copies the transformer block below slot '1'" in why and "Linear" in why
