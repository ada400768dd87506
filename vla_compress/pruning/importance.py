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


TAYLOR_MODES = ("param_mix", "param_first", "param_second", "vectorize")  # LLM-Pruner's `--taylor` choices


class TaylorImportance:
    """LLM-Pruner's Taylor importance (hf_prune.py `--taylor`; its default and ours: "param_mix").

    With `G` the gradient of the mean action loss over the N calibration samples and `F = (1/N) sum_j
    g_j**2` the mean squared per-sample gradient (LLM-Pruner's `acc_grad`), each weight element has the
    salience `s`:
        param_first   s = W * G
        param_second  s = W * F * W
        param_mix     s = W * G - 0.5 * W * F * W
    and a unit scores `sum |s|` over its elements in every member projection. `vectorize` scores each
    channel (row or column) of each member `|sum over the channel of W * G|` and sums those over the
    unit's channels and members.

    Only the grouped weights require grad. `vectorize` folds each gradient into per-channel sums as soon
    as it is accumulated and frees it; the `param_*` modes keep `G` and / or `F` per element (fp32) for
    the grouped weights, and the modes that need `F` backpropagate one sample at a time, as LLM-Pruner.
    """

    def __init__(self, model: nn.Module, groups: list[Group], batches: Iterable[dict],
                 mode: str = "param_mix") -> None:
        if mode not in TAYLOR_MODES:
            raise ValueError(f"taylor mode {mode!r} is unknown; allowed: {TAYLOR_MODES}")
        self.mode, self.groups = mode, groups
        self.needs_first, self.needs_second = mode != "param_second", mode in ("param_second", "param_mix")
        self.first: dict[nn.Parameter, torch.Tensor] = {}  # sum_j g_j (vectorize: per-channel sums of W g)
        self.second: dict[nn.Parameter, torch.Tensor] = {}  # sum_j g_j ** 2
        self.n_samples = 0
        members = {id(m.linear.weight): m for g in groups for m in g.members}
        requires_grad = {p: p.requires_grad for p in model.parameters()}
        was_training = model.training
        for p in model.parameters():
            p.requires_grad_(False)
        handles = []
        for member in members.values():
            weight = member.linear.weight
            weight.requires_grad_(True)
            handles.append(weight.register_post_accumulate_grad_hook(self._accumulate(member)))
        model.eval()  # no dropout while measuring
        try:
            for batch in batches:
                rows = len(batch["input_ids"])
                for sample in _split_rows(batch) if self.needs_second else [batch]:
                    # the action loss is a mean over 7 tokens per row: a batch's gradient times its rows
                    # is the sum of its per-sample gradients
                    (model.action_loss(**sample) * len(sample["input_ids"])).backward()
                self.n_samples += rows
        finally:
            for handle in handles:
                handle.remove()
            for p, flag in requires_grad.items():
                p.requires_grad_(flag)
            model.train(was_training)
        if self.n_samples == 0:
            raise ValueError("calibration is empty; pass at least one sample or batch")
        self.scores = {(g.layer, g.kind): self._score(g) for g in groups}
        self.first.clear()
        self.second.clear()

    def _accumulate(self, member: Member) -> Callable[[torch.Tensor], None]:
        def fold(weight: torch.Tensor) -> None:
            grad = weight.grad.float()
            if self.mode == "vectorize":
                grad = _channel_sums(member, weight.detach().float() * grad)
            if self.needs_first:
                self.first[weight] = self.first.get(weight, 0) + grad
            if self.needs_second:
                self.second[weight] = self.second.get(weight, 0) + grad * grad
            weight.grad = None
        return fold

    def _score(self, group: Group) -> torch.Tensor:
        total = 0
        for member in group.members:
            weight, n = member.linear.weight, self.n_samples
            if self.mode == "vectorize":
                per_channel = (self.first[weight] / n).abs()
                total = total + per_channel.reshape(-1, member.size).sum(1)
                continue
            w = weight.detach().float()
            first = w * (self.first[weight] / n) if self.needs_first else 0
            second = w * (self.second[weight] / n) * w if self.needs_second else 0
            salience = {"param_first": first, "param_second": second, "param_mix": first - 0.5 * second}[self.mode]
            total = total + member.unit_view(salience.abs()).sum(1)
        return total

    def __call__(self, group: Group) -> torch.Tensor:
        return self.scores[(group.layer, group.kind)]


def _channel_sums(member: Member, salience: torch.Tensor) -> torch.Tensor:
    """Per-channel sums of a weight-shaped tensor: over each row (axis 0) or each column (axis 1)."""
    return salience.sum(1) if member.axis == 0 else salience.sum(0)


def _split_rows(batch: dict) -> list[dict]:
    """One single-row batch per sample (mid-padded rows stay valid alone: positions follow the mask)."""
    return [{key: value[i:i + 1] for key, value in batch.items()} for i in range(len(batch["input_ids"]))]


NAMED: dict[str, Importance] = {"l1": l1_importance, "l2": l2_importance, "random": random_importance}
TAYLOR = {"taylor": "param_mix", **{f"taylor_{mode}": mode for mode in TAYLOR_MODES}}  # name -> mode
CRITERIA = (*TAYLOR, *NAMED)
