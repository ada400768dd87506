"""GPTQ (Frantar et al., 2023) with calibration on robot samples, implemented here.

Why our own: auto-gptq is unmaintained and gptqmodel wraps Hugging Face causal LMs by class (it
cannot drive `OpenVLAForActionPrediction`, whose LM only sees image patches through our own forward),
and its fast CPU kernel needs input widths divisible by the group size, which pruned layers break.

Calibration is the one type pruning uses (`vla_compress.calibration`): robot samples with their
demonstrated actions, batched as SFT batches them, or ready batches. The model runs teacher-forced on
prompt + action tokens and hooks capture each linear's inputs at the real (not padding) positions.
Decoder layers are quantized one after the other, re-running calibration each time so later layers
see the already-quantized earlier ones.

Packed format of a `GPTQLinear` (all buffers, saved in safetensors):
    qweight [out, ceil(in * bits / 8)] uint8   two 4-bit codes per byte (low nibble first) or one 8-bit code
    scales  [out, n_groups] float16            per-group step size
    zeros   [out, n_groups] uint8              per-group zero point (asymmetric min-max grid)
    g_idx   [in] int32                         group of each input column (act-order permutes groups)
    w = (code - zeros[:, g_idx]) * scales[:, g_idx]
Odd widths: groups are `group_size` consecutive columns and the last one is shorter (`n_groups =
ceil(in / group_size)`), i.e. equivalent to padding the width to a multiple of the group size
without storing the padding; 4-bit rows of odd width get one padding nibble.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..calibration import Calibration, calibration_batches, collect_inputs
from .scope import DECODER_PREFIX, replace_module, sub_state_dict


@dataclass
class GPTQConfig:
    """Settings of `quantize(model, bits, method="gptq", calibration=...)`."""

    bits: int = 4
    group_size: int = 128
    act_order: bool = False
    damp_percent: float = 0.01
    batch_size: int = 4  # calibration samples per forward pass

    def __post_init__(self) -> None:
        for name in ("group_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def settings(self) -> dict:
        return {"group_size": self.group_size, "act_order": self.act_order, "damp_percent": self.damp_percent}


class GPTQLinear(nn.Module):
    """A linear layer holding packed integer weights; dequantizes on the fly in `forward`."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, bias: bool = False,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        n_groups, row_bytes = math.ceil(in_features / group_size), math.ceil(in_features * bits / 8)
        self.register_buffer("qweight", torch.zeros(out_features, row_bytes, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, n_groups, dtype=torch.float16, device=device))
        self.register_buffer("zeros", torch.zeros(out_features, n_groups, dtype=torch.uint8, device=device))
        self.register_buffer("g_idx", torch.arange(in_features, dtype=torch.int32, device=device) // group_size)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None

    def pack(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor) -> None:
        """Store integer `codes [out, in]` with their group `scales`, `zeros` and `g_idx`."""
        codes = codes.to(torch.uint8)
        if self.bits == 4:
            codes = F.pad(codes, (0, codes.shape[1] % 2))
            codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
        self.qweight.copy_(codes)
        self.scales.copy_(scales)
        self.zeros.copy_(zeros)
        self.g_idx.copy_(g_idx)

    def codes(self) -> torch.Tensor:
        """Unpacked integer codes `[out, in]` (uint8)."""
        if self.bits == 8:
            return self.qweight
        return torch.stack([self.qweight & 0xF, self.qweight >> 4], dim=-1).flatten(1)[:, :self.in_features]

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        g_idx = self.g_idx.long()
        scales, zeros = self.scales.to(dtype)[:, g_idx], self.zeros.to(dtype)[:, g_idx]
        return (self.codes().to(dtype) - zeros) * scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")


def _grid(w: torch.Tensor, maxq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min-max grid per row of `w [out, cols]`: (scale, zero), each `[out]`."""
    low, high = w.min(dim=1).values.clamp(max=0), w.max(dim=1).values.clamp(min=0)
    scale = (high - low) / maxq
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, torch.round(-low / scale)


def gptq_quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, config: GPTQConfig
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ on one weight `[out, in]` with input Hessian `[in, in]`: (codes, scales, zeros, g_idx).

    Columns are quantized one at a time; each rounding error is spread over the not-yet-quantized
    columns through the Cholesky factor of the inverse Hessian. Groups are blocks of `group_size`
    columns (in act-order when `act_order`); a group's grid is fixed when its first column comes up.
    """
    maxq, out_features, columns = 2 ** config.bits - 1, *weight.shape
    W, H = weight.detach().float().clone(), hessian.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(H), descending=True) if config.act_order else torch.arange(columns)
    W, H = W[:, perm], H[perm][:, perm]
    H += config.damp_percent * torch.mean(torch.diag(H)) * torch.eye(columns)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    codes = torch.zeros_like(W)
    n_groups = math.ceil(columns / config.group_size)
    scales, zeros = torch.zeros(out_features, n_groups), torch.zeros(out_features, n_groups)
    for start in range(0, columns, config.group_size):
        end, group = min(start + config.group_size, columns), start // config.group_size
        scale, zero = _grid(W[:, start:end], maxq)
        scales[:, group], zeros[:, group] = scale, zero
        errors = torch.zeros(out_features, end - start)
        for i in range(start, end):
            q = torch.clamp(torch.round(W[:, i] / scale) + zero, 0, maxq)
            codes[:, i] = q
            error = (W[:, i] - (q - zero) * scale) / Hinv[i, i]
            W[:, i:end] -= error.unsqueeze(1) * Hinv[i, i:end].unsqueeze(0)
            errors[:, i - start] = error
        W[:, end:] -= errors @ Hinv[start:end, end:]
    inverse = torch.argsort(perm)
    g_idx = (torch.arange(columns) // config.group_size)[inverse]
    return codes[:, inverse], scales, zeros, g_idx.int()


def _hessians(model: nn.Module, names: list[str], batches: list[dict]) -> dict[str, torch.Tensor]:
    """`2/n sum x x^T` over every real-token input row each named linear sees."""
    hessians: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def accumulate(name: str, x: torch.Tensor) -> None:
        x = x.detach().float()
        n = counts.get(name, 0)
        hessians[name] = hessians.get(name, 0) * (n / (n + len(x))) + (2 / (n + len(x))) * x.T @ x
        counts[name] = n + len(x)

    collect_inputs(model, batches, {name: model.get_submodule(name) for name in names}, accumulate)
    return hessians


def _stage(name: str) -> str:
    """The decoder layer or ViT block a linear belongs to (quantized together); other linears (projector,
    output head) form their own stage. Stages run in the model's order, vision first."""
    for marker in (DECODER_PREFIX, ".blocks."):
        if marker in name:
            head, _, rest = name.partition(marker)
            return head + marker + rest.split(".")[0]
    return name


def quantize_linears(model: nn.Module, names: list[str], config: GPTQConfig, calibration: Calibration | None) -> None:
    """GPTQ-quantize the named linears stage by stage (decoder layer by decoder layer)."""
    if calibration is None:
        raise ValueError("method='gptq' needs calibration: robot samples {'image', 'instruction', 'action'} "
                         "(e.g. a DemoDataset's) or processor batches")
    batches = list(calibration_batches(model, calibration, config.batch_size))
    stages: dict[str, list[str]] = {}
    for name in names:
        stages.setdefault(_stage(name), []).append(name)
    for stage_names in stages.values():
        hessians = _hessians(model, stage_names, batches)
        for name in stage_names:
            linear = model.get_submodule(name)
            hessian = hessians.get(name, torch.zeros(linear.in_features, linear.in_features)).cpu()
            codes, scales, zeros, g_idx = gptq_quantize_weight(linear.weight.cpu(), hessian, config)
            module = GPTQLinear(linear.in_features, linear.out_features, config.bits, config.group_size,
                                bias=linear.bias is not None)
            module.pack(codes, scales, zeros, g_idx)
            if linear.bias is not None:
                module.bias.data.copy_(linear.bias.detach())
            replace_module(model, name, module.to(linear.weight.device))


def load_linears(model: nn.Module, names: list[str], config: GPTQConfig, state_dict: dict) -> None:
    """Rebuild the named layers as `GPTQLinear`s from a saved state dict (entries popped)."""
    for name in names:
        linear, saved = model.get_submodule(name), sub_state_dict(state_dict, name)
        module = GPTQLinear(linear.in_features, linear.out_features, config.bits, config.group_size,
                            bias=linear.bias is not None)
        module.load_state_dict(saved)
        replace_module(model, name, module)
