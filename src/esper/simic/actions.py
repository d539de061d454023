"""The policy's action space: one flat discrete choice per epoch, with physical masks.

Flat, not factored: WAIT, then GERMINATE(slot, blueprint) for every pair, then
FOSSILIZE(slot) and CULL(slot) for every slot. With 2 slots and 5 blueprints that
is 15 actions, small enough that a single categorical head learns them directly,
and a mask over it can express "this slot is occupied" exactly. (A factored
head, kind x slot x blueprint, would need conditional masks and buys nothing at
this size.) One action per epoch is enough: the lifecycle moves in epochs, and a
second decision can be taken at the next one.

Masks allow only what is physically possible, never timing opinions (that is
what the policy is for):
- GERMINATE only on a slot without a live seed (no report: DORMANT; the fossils
  of its stack stay beneath the new seed), and only what the run's growth budget
  still affords there (`EpochSignals.affordable`; every blueprint without a budget);
- FOSSILIZE only on a PROBATIONARY seed (whether G5 then passes is the seed's
  business: a refused fossilization is a no-op the policy learns from);
- CULL only on a live seed, GERMINATED..PROBATIONARY;
- WAIT always.
Masked logits are set to `MASKED_LOGIT`, a large negative number rather than
-inf: -inf turns into NaN in log-softmax gradients and entropy (0 * -inf).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from esper.leyline import (
    ACTIVE_STAGES,
    WAIT,
    Action,
    ActionKind,
    EpochSignals,
    SeedReport,
    SeedStage,
)

MASKED_LOGIT = -1e8


class ActionSpace:
    """Index <-> `Action` for one slot list and blueprint list, plus the validity mask."""

    def __init__(self, slot_ids: Sequence[str], blueprints: Sequence[str]) -> None:
        if not slot_ids or not blueprints:
            raise ValueError("an action space needs at least one slot and one blueprint")
        self.slot_ids = tuple(slot_ids)
        self.blueprints = tuple(blueprints)
        self.actions: list[Action] = [WAIT]
        self.actions += [Action(ActionKind.GERMINATE, s, b) for s in self.slot_ids for b in self.blueprints]
        self.actions += [Action(ActionKind.FOSSILIZE, s) for s in self.slot_ids]
        self.actions += [Action(ActionKind.CULL, s) for s in self.slot_ids]

    def __len__(self) -> int:
        return len(self.actions)

    def names(self) -> list[str]:
        return [action_name(a) for a in self.actions]

    def action(self, index: int, reason: str = "policy") -> Action:
        template = self.actions[index]
        return Action(template.kind, template.slot_id, template.blueprint_id, reason=reason)

    def mask(self, signals: EpochSignals) -> torch.Tensor:
        """Bool vector, True where the action is physically possible now."""
        return torch.tensor(
            [_possible(a, signals.slots.get(a.slot_id), signals.affordable) for a in self.actions], dtype=torch.bool
        )


def action_name(action: Action) -> str:
    """"GERMINATE block2 norm", "CULL block3", "WAIT": the key for action frequencies."""
    return " ".join(p for p in (action.kind.name, action.slot_id, action.blueprint_id) if p is not None)


def _possible(action: Action, report: SeedReport | None, affordable: dict[str, list[str]] | None) -> bool:
    match action.kind:
        case ActionKind.WAIT:
            return True
        case ActionKind.GERMINATE:
            within_budget = affordable is None or action.blueprint_id in affordable.get(action.slot_id, ())
            return report is None and within_budget
        case ActionKind.FOSSILIZE:
            return report is not None and report.stage == SeedStage.PROBATIONARY
        case ActionKind.CULL:
            return report is not None and report.stage in ACTIVE_STAGES
    return False


def apply_mask(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits with impossible actions pushed to `MASKED_LOGIT` (probability ~0, gradients finite)."""
    return torch.where(mask, logits, torch.full_like(logits, MASKED_LOGIT))
