"""Prunable groups of coupled weights, and the criteria that score their units.

A `Group` is one layer's attention (one unit per KV group: its q/k/v rows and o_proj columns) or
its MLP (one unit per channel: gate/up rows and the down_proj column). Groups are computed once;
a criterion is any callable `Group -> scores [num_units]` (higher = more important), as in
Torch-Pruning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..modeling.widths import decoder_layers

ATTENTION, MLP = "attention", "mlp"


@dataclass(frozen=True, eq=False)
class Member:
    """One projection of a group: its units are blocks of `size` rows (axis 0) or columns (axis 1)."""

    parent: nn.Module  # the layer's self_attn or mlp
    name: str  # attribute of `parent`, e.g. "q_proj"
    axis: int
    size: int

    @property
    def linear(self) -> nn.Linear:
        return getattr(self.parent, self.name)

    def unit_view(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` shaped like the weight -> `[num_units, -1]`, one row per unit."""
        if self.axis == 0:
            return tensor.reshape(tensor.shape[0] // self.size, -1)
        out_features = tensor.shape[0]
        return tensor.reshape(out_features, -1, self.size).transpose(0, 1).reshape(-1, out_features * self.size)

    def elements(self, units: torch.Tensor) -> torch.Tensor:
        """Row (axis 0) or column (axis 1) indices covered by `units`."""
        offsets = torch.arange(self.size, device=units.device)
        return (units[:, None] * self.size + offsets).flatten()


@dataclass(frozen=True, eq=False)
class Group:
    """The coupled projections of one layer's attention or MLP."""

    layer: int
    kind: str  # ATTENTION or MLP
    members: tuple[Member, ...]

    @property
    def num_units(self) -> int:
        first = self.members[0]
        return first.linear.weight.shape[first.axis] // first.size

    def unit_weights(self) -> list[torch.Tensor]:
        """Each member's weight as `[num_units, -1]`."""
        return [m.unit_view(m.linear.weight) for m in self.members]


Importance = Callable[[Group], torch.Tensor]


def layer_groups(model: nn.Module, layers: Iterable[int]) -> list[Group]:
    """The attention and MLP groups of the given decoder layers."""
    groups = []
    for index in layers:
        layer = decoder_layers(model.language_model)[index]
        attn, mlp = layer.self_attn, layer.mlp
        hd = attn.head_dim
        per_group = hd * (attn.q_proj.out_features // attn.k_proj.out_features)  # q rows per KV group
        groups.append(Group(index, ATTENTION, (
            Member(attn, "q_proj", 0, per_group), Member(attn, "k_proj", 0, hd),
            Member(attn, "v_proj", 0, hd), Member(attn, "o_proj", 1, per_group),
        )))
        groups.append(Group(index, MLP, (
            Member(mlp, "gate_proj", 0, 1), Member(mlp, "up_proj", 0, 1), Member(mlp, "down_proj", 1, 1),
        )))
    return groups


def l1_importance(group: Group) -> torch.Tensor:
    """Sum of |W| over each unit's weights."""
    return sum(w.detach().float().abs().sum(1) for w in group.unit_weights())


def l2_importance(group: Group) -> torch.Tensor:
    """L2 norm of each unit's weights."""
    return sum(w.detach().float().pow(2).sum(1) for w in group.unit_weights()).sqrt()


def random_importance(group: Group) -> torch.Tensor:
    """Uniform random scores (a baseline; seed with `torch.manual_seed`)."""
    return torch.rand(group.num_units, device=group.members[0].linear.weight.device)


class TaylorImportance:
    """First-order Taylor salience |sum over the unit of W * dL/dW| (LLM-Pruner's element-wise, first order).

    Gradients come from `model.action_loss` on calibration batches. Only the grouped weights
    require grad, and each weight's gradient is folded into per-unit sums as soon as it is
    accumulated and then freed, so at most one weight matrix's gradient exists at a time.
    """

    def __init__(self, model: nn.Module, groups: list[Group], batches: Iterable[dict]) -> None:
        self.scores = {(g.layer, g.kind): torch.zeros(g.num_units, device=g.members[0].linear.weight.device)
                       for g in groups}
        requires_grad = {p: p.requires_grad for p in model.parameters()}
        was_training = model.training
        for p in model.parameters():
            p.requires_grad_(False)
        handles = []
        for group in groups:
            for member in group.members:
                weight = member.linear.weight
                weight.requires_grad_(True)
                handles.append(weight.register_post_accumulate_grad_hook(self._accumulate(group, member)))
        model.eval()  # no dropout while measuring
        n_batches = 0
        try:
            for batch in batches:
                model.action_loss(**batch).backward()
                n_batches += 1
        finally:
            for handle in handles:
                handle.remove()
            for p, flag in requires_grad.items():
                p.requires_grad_(flag)
            model.train(was_training)
        if n_batches == 0:
            raise ValueError("calibration is empty; pass at least one sample or batch")

    def _accumulate(self, group: Group, member: Member) -> Callable[[torch.Tensor], None]:
        key = (group.layer, group.kind)

        def fold(weight: torch.Tensor) -> None:
            salience = weight.detach().float() * weight.grad.float()
            self.scores[key] += member.unit_view(salience).sum(1)
            weight.grad = None
        return fold

    def __call__(self, group: Group) -> torch.Tensor:
        return self.scores[(group.layer, group.kind)].abs()


NAMED: dict[str, Importance] = {"l1": l1_importance, "l2": l2_importance, "random": random_importance}
CRITERIA = ("taylor", *NAMED)
