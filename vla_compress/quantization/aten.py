"""Weight-only int8 / int4 linears on PyTorch's own CPU kernels: faster batch-1 decode than float32.

Decode (a few rows per call) runs `torch._weight_int8pack_mm` (int8 codes, one bfloat16 scale per
output row) or `aten._weight_int4pack_mm_for_cpu` (int4 codes in groups of `group_size` input columns,
a bfloat16 scale and zero per group: `w = (code - 8) * scale + zero`), with bfloat16 activations: both
kernels are vectorized (AVX2, AVX512) for bfloat16 only, and run a scalar loop on float32 activations.
At batch 1 they read 1/4 or 1/8 of float32's weight bytes. They are slower than a float GEMM on many
rows, so calls with more rows than `KERNEL_MAX_ROWS` (the prompt pass) dequantize the weight into a
reused buffer and run `F.linear` in the activations' dtype; so do calls off the CPU.

Why not torchao (0.18 installs beside torch 2.14.1): its CPU int4 weight (the prototype
`Int4OpaqueTensor`) calls the same kernel with the activations' dtype, so float32 models take the
scalar loop (7-14x slower than float32 here); it stores the kernel's packed layout, which differs
between AVX2 and AVX512 builds, so its checkpoints do not move between CPUs; it cannot dequantize for
the prompt pass; and its int8 weight-only tensor dequantizes on every call rather than using a kernel.
Checkpoints here store plain codes (int4: two per byte, low nibble first), packed at load time.

Widths the kernels do not take (pruned layers): input columns are padded with zeros to a multiple of
32 (the int8 kernel reads 8 or 16 columns at a time with aligned loads and crashes otherwise; the
int4 kernel needs whole groups), int4 output rows with zero rows to a multiple of 16; the int4 group
is the largest of 256, 128, 64, 32 up to `group_size` that divides the padded width; outputs are sliced
back. Every layer of the scope is quantized; the padding costs at most 31 columns (and 15 rows) of codes.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .scope import replace_module, sub_state_dict

GROUP_SIZES = (32, 64, 128, 256)
# Rows per call (batch x tokens) up to which the kernels beat dequantize + float GEMM (measured, docs/quantization.md).
KERNEL_MAX_ROWS = {8: 16, 4: 32}
ROW_MULTIPLE, COLUMN_MULTIPLE = 16, 32  # padded widths: int4 out_features, in_features (both bits)


@dataclass
class AtenConfig:
    """Settings of `quantize(model, bits, method="aten")`: weight-only int8 (per output row) or int4.

    `group_size` applies to 4-bit: input columns sharing one scale and zero (32, 64, 128 or 256).
    """

    bits: int = 4
    group_size: int = 128

    def __post_init__(self) -> None:
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"group_size={self.group_size!r} is not supported; allowed: {GROUP_SIZES}")

    def settings(self) -> dict:
        """What `config.quantization` records (besides method, bits and modules)."""
        return {"group_size": self.group_size} if self.bits == 4 else {}


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def int4_shape(in_features: int, out_features: int, group_size: int) -> tuple[int, int, int]:
    """Padded (out rows, in columns) and the group of an int4 layer (see the module docstring)."""
    columns = _round_up(in_features, COLUMN_MULTIPLE)
    group = next(g for g in sorted(GROUP_SIZES, reverse=True) if g <= group_size and columns % g == 0)
    return _round_up(out_features, ROW_MULTIPLE), columns, group


def _unpack_kernel_layout(packed: torch.Tensor, out: torch.Tensor, block: int, halves: bool) -> torch.Tensor:
    """Write the codes of `_convert_weight_to_int4pack_for_cpu`'s layout into `out` `[rows, columns]` (any dtype).

    That layout (aten/src/ATen/native/cpu/int4mm_kernel.cpp) stores blocks of `block` rows, column by
    column; a full block on AVX2 / AVX512 puts row j in the low and row j + block/2 in the high nibble
    (`halves`), shorter blocks and other builds put rows 2j and 2j+1 in one byte.
    """
    rows, columns = out.shape
    flat, full = packed.reshape(-1), rows // block * block
    for start, size, is_full in ((0, full, True), (full, rows - full, False)):
        if not size:
            continue
        blocks, width = (size // block, block) if is_full else (1, size)
        data = flat[start * columns // 2:(start + size) * columns // 2].view(blocks, columns, width // 2)
        split = (2, width // 2) if is_full and halves else (width // 2, 2)  # which nibble holds which row
        target = out[start:start + size].view(blocks, *split, columns)
        low, high = (target[:, 0], target[:, 1]) if split[0] == 2 else (target[:, :, 0], target[:, :, 1])
        low.copy_((data & 15).transpose(1, 2))
        high.copy_((data >> 4).transpose(1, 2))
    return out


_INT4_MM = torch.ops.aten._weight_int4pack_mm_for_cpu.default


# Inductor's own lowering of `_weight_int8pack_mm` fails on a computed input (torch 2.14.1: "AssertionError:
# Pointwise"), so under torch.compile (`decode="compiled"`) both kernels are called as opaque custom ops.
@torch.library.custom_op("vla_compress::int8_weight_only_mm", mutates_args=())
def _int8_mm_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return torch._weight_int8pack_mm(x.contiguous(), qweight, scales)


@torch.library.custom_op("vla_compress::int4_weight_only_mm", mutates_args=())
def _int4_mm_op(x: torch.Tensor, packed: torch.Tensor, group_size: int, scale_zero: torch.Tensor) -> torch.Tensor:
    return _INT4_MM(x.contiguous(), packed, group_size, scale_zero)


@_int8_mm_op.register_fake
def _(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], qweight.shape[0])


@_int4_mm_op.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, group_size: int, scale_zero: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], scale_zero.shape[1])

_buffers = threading.local()


def _bfloat16(tensor: torch.Tensor) -> torch.Tensor:
    """The kernels' scales in bfloat16 (stored in the layer's dtype, with bfloat16-exact values)."""
    return tensor if tensor.dtype == torch.bfloat16 else tensor.to(torch.bfloat16)


def _buffer(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A flat buffer reused by every layer of this thread for its dequantized weight: on a CPU a fresh
    multi-MB tensor per call costs more in page faults than the dequantization itself."""
    held = _buffers.__dict__.setdefault("held", {})
    buffer = held.get((dtype, device))
    if buffer is None or buffer.numel() < numel:
        buffer = held[dtype, device] = torch.empty(numel, dtype=dtype, device=device)
    return buffer[:numel]


@functools.cache
def _kernel_layout() -> tuple[int, bool]:
    """Which layout this torch build packs int4 weights in, found by packing a probe (not by CPU name)."""
    probe = torch.randint(0, 16, (112, 64), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1)
    for layout in ((64, True), (32, True), (32, False), (64, False)):
        if torch.equal(_unpack_kernel_layout(packed, torch.empty_like(probe), *layout), probe):
            return layout
    raise RuntimeError(f"torch {torch.__version__} packs int4 weights in a layout method='aten' does not know; "
                       "use method='quanto'")


class AtenLinear(nn.Module):
    """A frozen weight-only int8 / int4 `nn.Linear` (see the module docstring for kernels and layout).

    State dict: int8: `qweight` int8 `[out, in_padded]`, `scales` `[out]`; int4: `qweight` uint8
    `[out_padded, in_padded / 2]` (plain codes, two per byte, low nibble = even column), `scale_zero`
    `[in_padded / group, out_padded, 2]`; `bias` as the float layer's. Scales are frozen parameters in the
    layer's float dtype (so code that reads a module's dtype from its parameters sees the model's), with
    values rounded to bfloat16, the kernels' dtype.
    """

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int = 128, bias: bool = True,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits={bits!r} is not supported; allowed: (4, 8)")
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        if bits == 8:
            self.rows, self.columns = out_features, _round_up(in_features, COLUMN_MULTIPLE)
            self.register_buffer("qweight", torch.zeros(self.rows, self.columns, dtype=torch.int8))
            self.scales = nn.Parameter(torch.ones(out_features, dtype=dtype), requires_grad=False)
        else:
            self.rows, self.columns, self.group_size = int4_shape(in_features, out_features, group_size)
            # The kernel's layout depends on the build; the state dict holds plain codes (_save_to_state_dict).
            self.register_buffer("packed", torch.zeros(self.rows, self.columns // 2, dtype=torch.uint8),
                                 persistent=False)
            self.scale_zero = nn.Parameter(torch.zeros(self.columns // self.group_size, self.rows, 2, dtype=dtype),
                                           requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int = 128) -> AtenLinear:
        """Quantize `linear` (round to nearest: symmetric per row for int8, min-max per group for int4)."""
        module = cls(linear.in_features, linear.out_features, bits, group_size, linear.bias is not None,
                     linear.weight.dtype)
        weight = linear.weight.detach().float().cpu()
        if bits == 8:
            scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.bfloat16)
            codes = torch.round(weight / scales.float()[:, None]).clamp(-127, 127)
            module.qweight.copy_(F.pad(codes, (0, module.columns - module.in_features)))
            module.scales.data.copy_(scales)
        else:
            weight = F.pad(weight, (0, module.columns - module.in_features, 0, module.rows - module.out_features))
            groups = weight.view(module.rows, -1, module.group_size)
            low, high = groups.amin(dim=-1), groups.amax(dim=-1)
            scale = ((high - low) / 15).clamp(min=1e-6).to(torch.bfloat16)
            zero = (low + 8 * scale.float()).to(torch.bfloat16)  # what the kernel adds: (code - 8) * scale + zero
            codes = torch.round((groups - (zero.float() - 8 * scale.float())[..., None]) / scale.float()[..., None])
            module._set_codes(codes.clamp(0, 15).view(module.rows, module.columns).to(torch.uint8))
            module.scale_zero.data.copy_(torch.stack((scale, zero), dim=-1).transpose(0, 1))
        if linear.bias is not None:
            module.bias.data.copy_(linear.bias.detach())
        return module.to(linear.weight.device)

    def _set_codes(self, codes: torch.Tensor) -> None:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.cpu().to(torch.int32).contiguous(), 1)
        self.packed = packed.to(self.packed.device)

    def codes(self) -> torch.Tensor:
        """int4 codes `[rows, columns]` uint8 (0..15), unpacked from the kernel's layout."""
        out = torch.empty(self.rows, self.columns, dtype=torch.uint8, device=self.packed.device)
        return _unpack_kernel_layout(self.packed, out, *_kernel_layout())

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight `[out, in]` the codes stand for."""
        device = (self.scales if self.bits == 8 else self.scale_zero).device
        return self._dequantize(torch.empty(self.rows * self.columns, dtype=dtype, device=device))

    def _dequantize(self, flat: torch.Tensor) -> torch.Tensor:
        weight = flat.view(self.rows, self.columns)
        if self.bits == 8:
            weight.copy_(self.qweight).mul_(self.scales.to(weight.dtype)[:, None])
        else:
            _unpack_kernel_layout(self.packed, weight, *_kernel_layout())
            scale, zero = self.scale_zero.to(weight.dtype).permute(2, 1, 0).contiguous()  # [rows, groups] each
            groups = weight.view(self.rows, -1, self.group_size)
            groups.mul_(scale[..., None]).add_((zero - 8 * scale)[..., None])
        return weight[: self.out_features, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] > KERNEL_MAX_ROWS[self.bits] or not x.is_cpu:
            weight = self._dequantize(_buffer(self.rows * self.columns, x.dtype, x.device))
            return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))
        # A fresh bfloat16 copy (so 64-byte aligned, as the int8 kernel's loads need), padded to the codes' width.
        rows = rows.to(torch.bfloat16, copy=True)
        if self.columns != self.in_features:
            rows = F.pad(rows, (0, self.columns - self.in_features))
        compiling = torch.compiler.is_compiling()
        if self.bits == 8:
            int8_mm = _int8_mm_op if compiling else torch._weight_int8pack_mm
            out = int8_mm(rows, self.qweight, _bfloat16(self.scales))
        else:
            int4_mm = _int4_mm_op if compiling else _INT4_MM
            out = int4_mm(rows, self.packed, self.group_size, _bfloat16(self.scale_zero))
            if self.rows != self.out_features:
                out = out[:, : self.out_features]
        out = out.to(x.dtype)
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.bits == 4:
            codes = self.codes().cpu().view(self.rows, -1, 2)
            destination[prefix + "qweight"] = (codes[..., 0] | (codes[..., 1] << 4)).contiguous()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args) -> None:
        if self.bits == 4 and prefix + "qweight" in state_dict:
            plain = state_dict.pop(prefix + "qweight")
            self._set_codes(torch.stack((plain & 15, plain >> 4), dim=-1).flatten(-2))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{group}, "
                f"bias={self.bias is not None}")


def quantize_linears(model: nn.Module, names: list[str], config: AtenConfig) -> None:
    """Replace each named `nn.Linear` by an `AtenLinear` (quantized on the CPU, moved back to its device)."""
    if config.bits == 4:
        _kernel_layout()
    for name in names:
        replace_module(model, name, AtenLinear.from_linear(model.get_submodule(name), config.bits, config.group_size))


def load_linears(model: nn.Module, names: list[str], config: AtenConfig, state_dict: dict) -> None:
    """Rebuild the named layers as `AtenLinear`s from a saved state dict (their entries are popped)."""
    for name in names:
        linear = model.get_submodule(name)
        module = AtenLinear(linear.in_features, linear.out_features, config.bits, config.group_size,
                            linear.bias is not None, linear.weight.dtype)
        module.load_state_dict(sub_state_dict(state_dict, name))
        replace_module(model, name, module)
