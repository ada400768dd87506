"""Weight-only quantization through optimum-quanto (int8 / int4 weights, float activations).

quanto dequantizes in PyTorch on every call, so on a CPU it is slower than float32; `aten.py` (method
"aten") is the fast CPU path, and docs/quantization.md compares both with torchao. quanto's layers save
to safetensors as plain tensors. It groups int4 weights by 128 (or the largest multiple of 32 down to 32
that divides the input width) and falls back to one scale per output row when none divides it (pruned
layers of odd width).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .scope import replace_module, sub_state_dict

QTYPES = {8: "qint8", 4: "qint4"}


@dataclass
class QuantoConfig:
    """Settings of `quantize(model, bits, method="quanto")`: weight-only int8 or int4."""

    bits: int = 8

    def settings(self) -> dict:
        return {"weights": QTYPES[self.bits]}


def _quantized(linear: nn.Linear, config: QuantoConfig) -> nn.Module:
    from optimum.quanto import qtypes
    from optimum.quanto.nn import QLinear

    return QLinear.from_module(linear, weights=qtypes[QTYPES[config.bits]])


def quantize_linears(model: nn.Module, names: list[str], config: QuantoConfig) -> None:
    """Replace each named `nn.Linear` by a frozen quanto `QLinear` (weights stored as integers)."""
    for name in names:
        module = _quantized(model.get_submodule(name), config)
        module.freeze()
        replace_module(model, name, module)


def load_linears(model: nn.Module, names: list[str], config: QuantoConfig, state_dict: dict) -> None:
    """Rebuild the named layers as quanto `QLinear`s from a saved state dict (entries popped)."""
    for name in names:
        module = _quantized(model.get_submodule(name), config)
        module.load_state_dict(sub_state_dict(state_dict, name))
        replace_module(model, name, module)
