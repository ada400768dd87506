"""Unstructured sparsity of the LLM's decoder projections: magnitude and Wanda (Sun et al., 2024).

Pruned weights are set to zero, so checkpoints hold plain dense tensors. `hold_sparsity` keeps
them zero through fine-tuning by masking their gradients: with zero weight and zero gradient,
SGD (with momentum), Adam and AdamW (decoupled or L2 decay) leave them at exactly zero. The mask
is the weight's zero pattern, so no mask tensor is stored (a 7B model would need 6.5 GB for it)
and a reloaded checkpoint regains its masks with `hold_sparsity(model)`. Create the optimizer
after pruning: state accumulated before it could still move pruned weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..calibration import collect_inputs
from ..modeling.widths import decoder_layers


def decoder_linears(model: nn.Module, layers: Iterable[int]) -> dict[str, nn.Linear]:
    """The q/k/v/o/gate/up/down projections of the given decoder layers, by module path."""
    out = {}
    all_layers = decoder_layers(model.language_model)
    for index in layers:
        for name, module in all_layers[index].named_modules():
            if isinstance(module, nn.Linear):
                out[f"layers.{index}.{name}"] = module
    return out


@torch.no_grad()
def prune_magnitude(linears: dict[str, nn.Linear], sparsity: float) -> None:
    """Zero the `sparsity` fraction of smallest-|W| weights of each matrix."""
    for linear in linears.values():
        weight = linear.weight
        n_zero = int(sparsity * weight.numel())
        smallest = torch.topk(weight.detach().abs().flatten(), n_zero, largest=False).indices
        weight.view(-1)[smallest] = 0


@torch.no_grad()
def prune_wanda(model: nn.Module, linears: dict[str, nn.Linear], batches: Iterable[dict], sparsity: float) -> None:
    """Zero, in each output row, the `sparsity` fraction of weights with the smallest |W_ij| * ||X_j||_2.

    Input norms come from one pass of the dense model over the calibration data (Wanda's paper
    also reports this one-shot variant; it does not re-run later layers on pruned inputs).
    """
    sq_norms = {name: 0.0 for name in linears}

    def update(name: str, x: torch.Tensor) -> None:
        sq_norms[name] = sq_norms[name] + x.float().pow(2).sum(0)

    collect_inputs(model, batches, linears, update)
    for name, linear in linears.items():
        weight = linear.weight
        scores = weight.detach().abs().float() * torch.as_tensor(sq_norms[name]).sqrt()
        n_zero = int(sparsity * weight.shape[1])
        smallest = torch.topk(scores, n_zero, dim=1, largest=False).indices
        weight.scatter_(1, smallest, 0)


def hold_sparsity(model: nn.Module) -> int:
    """Keep the zero weights of the LLM's decoder projections at zero in training; returns how many hooks were added.

    Idempotent: projections that already hold their sparsity, or have no zeros, are skipped.
    """
    added = 0
    for linear in decoder_linears(model, range(len(decoder_layers(model.language_model)))).values():
        weight = linear.weight
        if getattr(linear, "_sparsity_hook", None) is not None or bool((weight != 0).all()):
            continue
        linear._sparsity_hook = weight.register_hook(lambda grad, weight=weight: grad * (weight != 0))
        added += 1
    return added


def zero_fraction(linears: dict[str, nn.Linear]) -> float:
    """Fraction of exactly-zero weights over the given projections."""
    zeros = sum(int((linear.weight == 0).sum()) for linear in linears.values())
    return zeros / sum(linear.weight.numel() for linear in linears.values())
