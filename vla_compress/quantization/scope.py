"""Which modules a quantization touches: one predicate over `(name, module)`.

The paper quantizes the LLM's decoder linear layers and keeps the vision backbone, the projector
and the output head in full precision; `include_lm_head`, `include_projector`, `include_vision` (the
ViTs' linears; patch embeddings are convolutions and stay) or a custom `filter_fn` widen the scope.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

FilterFn = Callable[[str, nn.Module], bool]

DECODER_PREFIX = "language_model.model.layers."
LM_HEAD = "language_model.lm_head"
PROJECTOR_PREFIX = "projector."
VISION_PREFIX = "vision_backbone."


def decoder_linears(name: str, module: nn.Module) -> bool:
    """The paper's scope: every `nn.Linear` inside the LLM's decoder layers."""
    return type(module) is nn.Linear and name.startswith(DECODER_PREFIX)


def default_filter(include_lm_head: bool = False, include_projector: bool = False,
                   include_vision: bool = False) -> FilterFn:
    """Decoder linears, plus the output head, the projector's and the vision backbones' linears if asked."""
    prefixes = (DECODER_PREFIX, *((PROJECTOR_PREFIX,) if include_projector else ()),
                *((VISION_PREFIX,) if include_vision else ()))

    def accepts(name: str, module: nn.Module) -> bool:
        return type(module) is nn.Linear and (name.startswith(prefixes) or (include_lm_head and name == LM_HEAD))
    return accepts


def scope_name(include_lm_head: bool, filter_fn: FilterFn | None, include_projector: bool = False,
               include_vision: bool = False) -> str:
    """Short label recorded in `config.quantization["scope"]`, e.g. "decoder_linears+lm_head"."""
    if filter_fn is not None:
        return "custom"
    extra = [name for name, on in (("lm_head", include_lm_head), ("projector", include_projector),
                                   ("vision", include_vision)) if on]
    return "+".join(["decoder_linears", *extra])


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
