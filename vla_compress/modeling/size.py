"""Honest parameter and byte accounting per component, quantized tensors included.

Counting `numel * element_size` over-reports tensor subclasses (quanto, torchao) and under-reports
bitsandbytes 4-bit weights (their scales live in `quant_state`). Here every tensor is measured by
the storage it really holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

COMPONENTS = ("vision_backbone", "projector", "language_model", "lm_head")


@dataclass
class ComponentSize:
    params: int  # logical parameter count (a 4-bit weight of shape [o, i] counts o * i)
    bytes: int  # bytes of the stored tensors, quantization scales included

    def __add__(self, other: ComponentSize) -> ComponentSize:
        return ComponentSize(self.params + other.params, self.bytes + other.bytes)


def tensor_nbytes(tensor: torch.Tensor) -> int:
    """Bytes held by a tensor, looking inside tensor subclasses and bitsandbytes quant state."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, nn.Parameter):
        inner_names, _ = tensor.__tensor_flatten__()
        return sum(tensor_nbytes(getattr(tensor, name)) for name in inner_names)
    total = tensor.numel() * tensor.element_size()
    quant_state = getattr(tensor, "quant_state", None)  # bitsandbytes Params4bit
    if quant_state is not None:
        total += sum(tensor_nbytes(t) for t in _quant_state_tensors(quant_state))
    scb = getattr(tensor, "SCB", None)  # bitsandbytes Int8Params row scales
    if isinstance(scb, torch.Tensor):
        total += tensor_nbytes(scb)
    return total


def _quant_state_tensors(state) -> list[torch.Tensor]:
    tensors = [t for t in (getattr(state, "absmax", None), getattr(state, "code", None)) if isinstance(t, torch.Tensor)]
    nested = getattr(state, "state2", None)
    return tensors + (_quant_state_tensors(nested) if nested is not None else [])


def logical_numel(tensor: torch.Tensor) -> int:
    quant_state = getattr(tensor, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return int(torch.Size(quant_state.shape).numel())
    return tensor.numel()


def module_size(module: nn.Module) -> ComponentSize:
    """Parameters and buffers of `module` (each tensor counted once)."""
    seen: set[int] = set()
    size = ComponentSize(0, 0)
    for _, param in module.named_parameters(remove_duplicate=True):
        if id(param) not in seen:
            seen.add(id(param))
            size += ComponentSize(logical_numel(param), tensor_nbytes(param))
    for _, buffer in module.named_buffers(remove_duplicate=True):
        if id(buffer) not in seen and buffer is not None:
            seen.add(id(buffer))
            size += ComponentSize(0, tensor_nbytes(buffer))
    for scb in _moved_int8_scales(module):
        if id(scb) not in seen:
            seen.add(id(scb))
            size += ComponentSize(0, tensor_nbytes(scb))
    return size


def _moved_int8_scales(module: nn.Module) -> list[torch.Tensor]:
    """Row scales that bitsandbytes' Linear8bitLt moves from `weight.SCB` to `state.SCB` on first forward."""
    scales = []
    for sub in module.modules():
        scb = getattr(getattr(sub, "state", None), "SCB", None)
        if isinstance(scb, torch.Tensor) and getattr(getattr(sub, "weight", None), "SCB", None) is None:
            scales.append(scb)
    return scales


def component_sizes(model: nn.Module) -> dict[str, ComponentSize]:
    """Sizes of vision backbone, projector, LM (without its output head), output head, and total."""
    missing = [name for name in ("vision_backbone", "projector", "language_model") if not hasattr(model, name)]
    if missing:
        raise ValueError(f"model must be an OpenVLAForActionPrediction; {type(model).__name__} has no {missing}")
    lm = model.language_model
    head = lm.get_output_embeddings()
    sizes = {
        "vision_backbone": module_size(model.vision_backbone),
        "projector": module_size(model.projector),
        "lm_head": module_size(head),
    }
    sizes["language_model"] = module_size(lm) + ComponentSize(-sizes["lm_head"].params, -sizes["lm_head"].bytes)
    sizes["total"] = module_size(model)
    return {key: sizes[key] for key in (*COMPONENTS, "total")}
