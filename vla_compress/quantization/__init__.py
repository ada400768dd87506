"""`quantize(model, bits, method=...)`: one verb over the bitsandbytes, GPTQ, quanto and aten backends.

Scope (which linears) is one predicate (`scope.py`); each backend module has a config dataclass,
`quantize_linears` and `load_linears`. The settings and the list of quantized modules are recorded
in `config.quantization`, so `load_vla(dir)` rebuilds the quantized layers before loading weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import torch
from safetensors.torch import load_file
from torch import nn

from ..calibration import Calibration
from ..deps import installed
from ..modeling.size import component_sizes
from . import aten, bnb, cpu, gptq
from .aten import AtenConfig, AtenLinear
from .bnb import BnbConfig
from .cpu import QuantoConfig
from .gptq import GPTQConfig, GPTQLinear
from .scope import FilterFn, default_filter, scope_name, select_linears

logger = logging.getLogger(__name__)

# method -> (backend module, config class, pip package needed or None)
METHODS: dict[str, tuple[ModuleType, type, str | None]] = {
    "bnb": (bnb, BnbConfig, "bitsandbytes"),
    "gptq": (gptq, GPTQConfig, None),
    "quanto": (cpu, QuantoConfig, "optimum.quanto"),
    "aten": (aten, AtenConfig, None),
}
BITS = (4, 8)


def require_method(method: str, argument: str = "method", hint: str = "") -> None:
    """Raise before any work when `method` is unknown (ValueError) or its package is missing (ImportError)."""
    if method not in METHODS:
        raise ValueError(f"{argument}={method!r} is unknown; allowed: {sorted(METHODS)}")
    package = METHODS[method][2]
    if package is not None and not installed(package):
        raise ImportError(f"{argument}={method!r} needs {package}: pip install vla-compress[quant]{hint}")


def _backend(method: str, bits: int) -> tuple[ModuleType, type]:
    require_method(method)
    if bits not in BITS:
        raise ValueError(f"bits={bits!r} is not supported; allowed: {BITS}")
    module, config_class, _ = METHODS[method]
    return module, config_class


def _config(config_class: type, bits: int, options: dict):
    try:
        return config_class(bits=bits, **options)
    except TypeError as error:
        allowed = [name for name in config_class.__dataclass_fields__ if name != "bits"]
        raise ValueError(f"{config_class.__name__} options are {allowed}; got {sorted(options)}") from error


QuantizationConfig = BnbConfig | GPTQConfig | QuantoConfig | AtenConfig
CONFIG_METHODS = {config_class: method for method, (_, config_class, _) in METHODS.items()}


def quantize(model: nn.Module, config: int | QuantizationConfig | None = None, method: str | None = None, *,
             bits: int | None = None, include_lm_head: bool = False, include_projector: bool = False,
             include_vision: bool = False, filter_fn: FilterFn | None = None,
             calibration: Calibration | None = None, **options) -> nn.Module:
    """Quantize the LLM's decoder linears of `model` in place and return it.

    `config` is a typed config, as torchao's `quantize_` takes one (`quantize(model, BnbConfig(bits=4))`,
    `quantize(model, GPTQConfig(bits=4, group_size=128), calibration=demos)`, `QuantoConfig(bits=8)`),
    or the shorthand `bits` (positional or `bits=`; default 4) with `method`: "bnb" (default; LLM.int8 /
    NF4, options of `BnbConfig`),
    "gptq" (needs `calibration`: robot samples `{"image", "instruction", "action"}` or processor
    batches, as `prune` takes; options of `GPTQConfig`), "quanto" (optimum-quanto weight-only) or "aten"
    (weight-only int8 / int4 on PyTorch's own CPU kernels, the fastest batch-1 decode on a CPU; option
    `group_size` of `AtenConfig`).
    The scope is the LLM's decoder linears (the paper's); `include_lm_head`, `include_projector` and
    `include_vision` add the output head, the projector and the vision backbones' linears (for the
    smallest checkpoint); `filter_fn(name, module)` replaces the scope entirely.
    """
    if config is not None and bits is not None:
        raise ValueError(f"pass config={config!r} or bits={bits!r}, not both")
    config = config if config is not None else (bits if bits is not None else 4)
    if isinstance(config, tuple(CONFIG_METHODS)):
        if method not in (None, CONFIG_METHODS[type(config)]) or options:
            raise ValueError(f"config={config!r} sets the method and its options; pass neither method= nor options")
        method = CONFIG_METHODS[type(config)]
        backend, _ = _backend(method, config.bits)
    elif isinstance(config, int) and not isinstance(config, bool):
        method = method or "bnb"
        backend, config_class = _backend(method, config)
        config = _config(config_class, config, options)
    else:
        raise ValueError(f"config={config!r} is invalid; allowed: bits 4 or 8 (with method=), or one of "
                         f"{[c.__name__ for c in CONFIG_METHODS]}")
    bits = config.bits
    if getattr(model.config, "quantization", None):
        raise ValueError(f"model is already quantized ({model.config.quantization['method']}, "
                         f"{model.config.quantization['bits']}-bit); start from the unquantized model")
    names = select_linears(model, filter_fn or default_filter(include_lm_head, include_projector, include_vision))
    if not names:
        raise ValueError("no nn.Linear module matches the quantization scope")
    before = component_sizes(model)["total"].bytes
    if method == "gptq":
        backend.quantize_linears(model, names, config, calibration)
    else:
        backend.quantize_linears(model, names, config)
    scope = scope_name(include_lm_head, filter_fn, include_projector, include_vision)
    model.config.quantization = {"method": method, "bits": bits, "scope": scope, **config.settings(), "modules": names}
    after = component_sizes(model)["total"].bytes
    logger.info("quantized %d linears (%s, %d-bit, %s): model %.2f MB -> %.2f MB", len(names), method, bits, scope,
                before / 1e6, after / 1e6)
    return model.eval()


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    return {key: value for file in files for key, value in load_file(file).items()}


def load_quantized(path: str | Path, config, device: str | torch.device = "cpu",
                   dtype: torch.dtype | None = None) -> nn.Module:
    """Rebuild a model saved after `quantize`: build, swap in the quantized layers, load weights."""
    from ..modeling.modeling_openvla import OpenVLAForActionPrediction
    from ..modeling.processing import OpenVLAProcessor

    recorded = config.quantization
    method, bits, names = recorded["method"], recorded["bits"], recorded["modules"]
    backend, config_class = _backend(method, bits)
    settings = {key: value for key, value in recorded.items() if key in config_class.__dataclass_fields__}
    settings.pop("bits")
    model = OpenVLAForActionPrediction(config)
    state_dict = _state_dict(Path(path))
    backend.load_linears(model, names, _config(config_class, bits, settings), state_dict)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    quantized = tuple(name + "." for name in names)
    missing = [key for key in missing if not key.startswith(quantized)]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if dtype is not None:
        model.to(dtype)
    model.processor = OpenVLAProcessor.from_pretrained(path, config)
    return model.to(device).eval()


__all__ = ["AtenConfig", "AtenLinear", "BnbConfig", "GPTQConfig", "GPTQLinear", "QuantizationConfig", "QuantoConfig",
           "load_quantized", "quantize"]
