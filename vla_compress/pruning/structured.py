"""Block-wise structured pruning (LLM-Pruner): remove KV groups of heads and MLP channels.

Slicing is done here directly rather than through Torch-Pruning's dependency graph: a Llama
layer has exactly two coupled groups (attention, MLP) whose couplings are known, the hidden size
never changes, and the result must be rebuilt from `llm_layer_widths` on reload anyway, so the
layers are resized with `modeling.widths` and the kept rows/columns copied in.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..modeling.widths import LayerWidth, decoder_layers, resize_decoder_layer
from .importance import ATTENTION, Group, Importance


def unit_step(group: Group, round_to: int | None) -> int:
    """Kept units must be a multiple of this so that kept widths are multiples of `round_to`."""
    if not round_to:
        return 1
    width = group.members[0].size  # features per unit: q rows per KV group, or 1 per MLP channel
    return math.lcm(width, round_to) // width


def kept_units(num_units: int, ratio: float, step: int, unit_size: int = 1) -> int:
    """Units kept when removing `ratio` of them, as LLM-Pruner's MetaPruner counts, rounded down to `step`.

    LLM-Pruner keeps `int(channels * (1 - ratio))` channels and removes whole units (heads) of
    `unit_size` channels: `(channels - kept channels) // unit_size` of them. On Llama-2-7B at 0.9 that
    keeps 1100 of 11008 MLP channels and 4 of 32 heads."""
    channels = num_units * unit_size
    removed = (channels - int(channels * (1 - ratio))) // unit_size
    return (num_units - removed) // step * step


def check_plan(groups: list[Group], ratio: float, round_to: int | None) -> None:
    """Raise before any work if the ratio (and round_to) would empty a layer's heads or MLP."""
    for group in groups:
        if kept_units(group.num_units, ratio, unit_step(group, round_to), group.members[0].size) < 1:
            what = "KV groups of heads" if group.kind == ATTENTION else "MLP channels"
            raise ValueError(
                f"ratio={ratio} with round_to={round_to} leaves layer {group.layer} with 0 {what} "
                f"(of {group.num_units}); allowed: a smaller ratio or round_to"
            )


def prune_blocks(model: nn.Module, groups: list[Group], importance: Importance, ratio: float,
                 round_to: int | None) -> None:
    """Keep the most important units of every group (the same ratio in each)."""
    keep = {}
    for group in groups:
        n_keep = kept_units(group.num_units, ratio, unit_step(group, round_to), group.members[0].size)
        keep[group] = top_units(importance(group), n_keep)
    shrink_layers(model, groups, keep)


def top_units(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices of the `n_keep` highest scores, in their original order."""
    return torch.topk(scores.float(), n_keep).indices.sort().values


def shrink_layers(model: nn.Module, groups: list[Group], keep: dict[Group, torch.Tensor]) -> None:
    """Keep only the units `keep[group]` of each group; layers are resized through `modeling.widths`.

    `groups` holds both groups (attention, MLP) of every layer it touches, as `layer_groups` builds them.
    """
    layers = decoder_layers(model.language_model)
    for attention, mlp in zip(groups[0::2], groups[1::2]):
        layer = layers[attention.layer]
        attn = layer.self_attn
        heads_per_group = attn.q_proj.out_features // attn.k_proj.out_features
        n_groups = len(keep[attention])
        width = LayerWidth(n_groups * heads_per_group, n_groups, len(keep[mlp]))
        with torch.no_grad():
            sliced = {(m.parent, m.name): _select(m.linear, m.axis, m.elements(keep[g]))
                      for g in (attention, mlp) for m in g.members}
        resize_decoder_layer(layer, width)
        with torch.no_grad():
            for (parent, name), (weight, bias) in sliced.items():
                linear = getattr(parent, name)
                linear.weight.copy_(weight)
                if bias is not None:
                    linear.bias.copy_(bias)


def _select(linear: nn.Linear, axis: int, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight rows/columns `index`; the bias follows the rows (it is whole for column slices)."""
    weight = linear.weight.index_select(axis, index)
    bias = linear.bias
    if bias is not None:
        bias = bias.index_select(0, index) if axis == 0 else bias.detach().clone()
    return weight, bias
