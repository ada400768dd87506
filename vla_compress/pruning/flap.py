"""FLAP (An et al., 2024): fluctuation-based adaptive structured pruning with bias compensation.

Score of an input channel j of o_proj / down_proj: the variance of x_j over calibration tokens
times ||W[:, j]||^2, summed over a unit's channels. Scores are standardized per module type
(attention, MLP) across layers; one global threshold, set so that `ratio` of the prunable
parameters of the chosen layers is removed, gives every layer its own width. The removed
channels' mean input times their weight columns becomes a bias of o_proj / down_proj.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..calibration import collect_inputs
from ..modeling.widths import decoder_layers
from .importance import Group
from .structured import shrink_layers, top_units, unit_step

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class _InputMoments:
    """Running count, mean and second moment of a module's input features (float64)."""

    def __init__(self) -> None:
        self.count, self.total, self.total_sq = 0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.double()
        self.count += x.shape[0]
        self.total = self.total + x.sum(0)
        self.total_sq = self.total_sq + x.pow(2).sum(0)

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    @property
    def variance(self) -> torch.Tensor:
        return (self.total_sq / self.count - self.mean.pow(2)).clamp_(min=0)


def prune_flap(model: nn.Module, groups: list[Group], batches: Iterable[dict], ratio: float,
               round_to: int | None, bias_compensation: bool = True) -> None:
    """Prune `groups` (both groups of each chosen layer) by FLAP's fluctuation metric."""
    consumer = {g: g.members[-1] for g in groups}  # o_proj / down_proj: the column-sliced member
    moments = {g: _InputMoments() for g in groups}
    collect_inputs(model, batches, {g: consumer[g].linear for g in groups}, lambda g, x: moments[g].update(x))

    scores = {}
    for g in groups:
        weight = consumer[g].linear.weight.detach().double()
        channel = moments[g].variance * weight.pow(2).sum(0)
        scores[g] = channel.view(-1, consumer[g].size).sum(1)
    n_keep = _global_widths(model, groups, _standardized(scores), ratio, round_to)
    keep = {g: top_units(scores[g], n_keep[g]) for g in groups}

    compensation = {}
    if bias_compensation:
        for g in groups:
            removed = torch.ones(g.num_units, dtype=torch.bool, device=keep[g].device)
            removed[keep[g]] = False
            columns = consumer[g].elements(removed.nonzero().flatten())
            weight = consumer[g].linear.weight.detach()
            compensation[g] = weight[:, columns].double() @ moments[g].mean[columns]
        add_biases(model)
    shrink_layers(model, groups, keep)
    with torch.no_grad():
        for g, bias in compensation.items():
            consumer[g].linear.bias += bias.to(consumer[g].linear.bias.dtype)


def _standardized(scores: dict[Group, torch.Tensor]) -> dict[Group, torch.Tensor]:
    """Scores standardized over all units of the same module type (FLAP's per-type normalization)."""
    out = {}
    for kind in {g.kind for g in scores}:
        same = [g for g in scores if g.kind == kind]
        values = torch.cat([scores[g] for g in same])
        mean, std = values.mean(), values.std().clamp(min=1e-12)
        out.update({g: (scores[g] - mean) / std for g in same})
    return out


def _global_widths(model: nn.Module, groups: list[Group], scores: dict[Group, torch.Tensor], ratio: float,
                   round_to: int | None) -> dict[Group, int]:
    """Units kept per group: remove the lowest standardized scores until `ratio` of the parameters are gone."""
    hidden = model.config.text_config.hidden_size
    cost = {g: hidden * sum(m.size for m in g.members) for g in groups}  # parameters per unit
    target = ratio * sum(cost[g] * g.num_units for g in groups)
    units = [(score, i, g) for g in groups for i, score in enumerate(scores[g].tolist())]
    units.sort(key=lambda unit: unit[0])
    n_keep = {g: g.num_units for g in groups}
    removed = 0.0
    for _, _, g in units:
        if removed >= target:
            break
        if n_keep[g] > 1:  # every layer keeps at least one KV group and one channel
            n_keep[g] -= 1
            removed += cost[g]
    for g in groups:
        step = unit_step(g, round_to)
        n_keep[g] = min(max(n_keep[g] // step, 1) * step, g.num_units)
    return n_keep


def add_biases(model: nn.Module) -> None:
    """Give every decoder projection a (zero) bias and record it in the text config.

    Llama's `attention_bias` / `mlp_bias` switch biases on for all layers at once, so all get one:
    a checkpoint with compensated o_proj/down_proj biases then reloads from its config alone.
    """
    text_config = model.config.text_config
    text_config.attention_bias = text_config.mlp_bias = True
    for layer in decoder_layers(model.language_model):
        for parent, names in ((layer.self_attn, PROJECTIONS), (layer.mlp, MLP_PROJECTIONS)):
            for name in names:
                linear = getattr(parent, name)
                if linear.bias is None:
                    weight = linear.weight
                    linear.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
