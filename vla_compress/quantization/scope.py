"""Which modules a quantization touches: one predicate over `(name, module)`.

The paper quantizes the LLM's decoder linear layers and keeps the vision backbone, the projector
and the output head in full precision; `include_lm_head` or a custom `filter_fn` widens the scope.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

FilterFn = Callable[[str, nn.Module], bool]

DECODER_PREFIX = "language_model.model.layers."
LM_HEAD = "language_model.lm_head"


def decoder_linears(name: str, module: nn.Module) -> bool:
    """The paper's scope: every `nn.Linear` inside the LLM's decoder layers."""
    return type(module) is nn.Linear and name.startswith(DECODER_PREFIX)


def default_filter(include_lm_head: bool = False) -> FilterFn:
    """Decoder linears, plus the LLM's output head when `include_lm_head`."""
    if not include_lm_head:
        return decoder_linears
    return lambda name, module: decoder_linears(name, module) or (name == LM_HEAD and type(module) is nn.Linear)


def scope_name(include_lm_head: bool, filter_fn: FilterFn | None) -> str:
    """Short label recorded in `config.quantization["scope"]`."""
    if filter_fn is not None:
        return "custom"
    return "decoder_linears+lm_head" if include_lm_head else "decoder_linears"


def select_linears(model: nn.Module, filter_fn: FilterFn) -> list[str]:
    """Names of the plain `nn.Linear` modules of `model` that `filter_fn` accepts."""
    return [name for name, module in model.named_modules() if type(module) is nn.Linear and filter_fn(name, module)]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted path `name` for `new`."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def sub_state_dict(state_dict: dict, prefix: str) -> dict:
    """Pop the entries under `prefix.` from `state_dict`, keys relative to the prefix."""
    keys = [key for key in state_dict if key.startswith(prefix + ".")]
    return {key[len(prefix) + 1:]: state_dict.pop(key) for key in keys}
