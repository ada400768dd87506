"""bitsandbytes backend: LLM.int8 (8-bit) and NF4 / FP4 (4-bit) linear layers, as in the paper."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .scope import replace_module, sub_state_dict

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANT_TYPES = ("nf4", "fp4")
CPU_PACK_ROWS = 32  # block_n of bitsandbytes' CPU weight repacking


@dataclass
class BnbConfig:
    """Settings of `quantize(model, bits, method="bnb", ...)`.

    `quant_type` and `compute_dtype` apply to 4-bit (float32 compute is the fast choice on CPU;
    use "bfloat16" on a GPU); `threshold` is LLM.int8's outlier threshold for 8-bit.
    """

    bits: int = 4
    quant_type: str = "nf4"
    compute_dtype: str = "float32"
    double_quant: bool = True
    blocksize: int = 64
    threshold: float = 6.0

    def __post_init__(self) -> None:
        if isinstance(self.compute_dtype, torch.dtype):
            self.compute_dtype = str(self.compute_dtype).removeprefix("torch.")
        if self.quant_type not in QUANT_TYPES:
            raise ValueError(f"quant_type={self.quant_type!r}; allowed: {QUANT_TYPES}")
        if self.compute_dtype not in DTYPE_NAMES:
            raise ValueError(f"compute_dtype={self.compute_dtype!r}; allowed: {sorted(DTYPE_NAMES)}")

    def settings(self) -> dict:
        """What `config.quantization` records (besides method, bits and modules)."""
        if self.bits == 8:
            return {"threshold": self.threshold}
        return {"quant_type": self.quant_type, "compute_dtype": self.compute_dtype,
                "double_quant": self.double_quant, "blocksize": self.blocksize}


def _empty_module(linear: nn.Linear, config: BnbConfig) -> nn.Module:
    import bitsandbytes as bnb

    # LLM.int8 casts float32 inputs to float16 by design; bitsandbytes warns about it on every call.
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    bias = linear.bias is not None
    if config.bits == 8:
        return bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False,
                                   threshold=config.threshold, device="meta")
    module = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias,
                               compute_dtype=DTYPE_NAMES[config.compute_dtype],
                               compress_statistics=config.double_quant, quant_type=config.quant_type, device="meta")
    # On AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights on the first forward; that repacking needs
    # in_features % blocksize == 0 and out_features % 32 == 0, which pruned widths break: keep those
    # layers on the generic kernel.
    if linear.in_features % config.blocksize or linear.out_features % CPU_PACK_ROWS:
        module.support_avx512bf16_for_cpu = False
    return module


def _with_bias(module: nn.Module, bias: torch.Tensor | None) -> nn.Module:
    module.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
    return module


def quantize_linears(model: nn.Module, names: list[str], config: BnbConfig) -> None:
    """Replace each named `nn.Linear` by its bitsandbytes counterpart (quantized on its device)."""
    import bitsandbytes as bnb

    for name in names:
        linear = model.get_submodule(name)
        device, weight = linear.weight.device, linear.weight.detach().float().cpu()
        module = _with_bias(_empty_module(linear, config), linear.bias)
        if config.bits == 8:
            module.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        else:
            module.weight = bnb.nn.Params4bit(weight, requires_grad=False, blocksize=config.blocksize,
                                              compress_statistics=config.double_quant,
                                              quant_type=config.quant_type, module=module)
        replace_module(model, name, module.to(device))


def load_linears(model: nn.Module, names: list[str], config: BnbConfig, state_dict: dict) -> None:
    """Rebuild the named layers from a saved state dict (their entries are popped from it)."""
    import bitsandbytes as bnb

    for name in names:
        linear, saved = model.get_submodule(name), sub_state_dict(state_dict, name)
        module = _with_bias(_empty_module(linear, config), saved.pop("bias", None))
        weight = saved.pop("weight")
        if config.bits == 8:
            saved.pop("weight_format", None)
            module.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False, CB=weight,
                                              SCB=saved.pop("SCB"))
        else:
            stats = {key.removeprefix("weight."): value for key, value in saved.items()}
            module.weight = bnb.nn.Params4bit.from_prequantized(weight, stats, device=weight.device, module=module)
        replace_module(model, name, module)
