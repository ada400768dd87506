"""`prune`: structured (block-wise, FLAP) and unstructured (magnitude, Wanda) pruning of the VLA's LLM.

Only the language model's decoder layers are touched; the vision backbone, projector,
embeddings and output head stay dense. Structured pruning records per-layer widths in
`config.llm_layer_widths`, so the result saves with `save_pretrained` and reloads with `load_vla`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from numbers import Integral, Real

from torch import nn

from ..calibration import Calibration, calibration_batches
from ..modeling.size import component_sizes
from ..modeling.widths import current_layer_widths, decoder_layers
from .configs import METHOD_OF, BlockPruning, FlapPruning, MagnitudePruning, PruningConfig, WandaPruning, as_arguments
from .flap import prune_flap
from .importance import CRITERIA, NAMED, TAYLOR, Group, Importance, TaylorImportance, layer_groups
from .structured import check_plan, prune_blocks
from .unstructured import decoder_linears, hold_sparsity, prune_magnitude, prune_wanda, zero_fraction

__all__ = ["CRITERIA", "METHODS", "BlockPruning", "FlapPruning", "Group", "MagnitudePruning", "PruneReport",
           "PruningConfig", "WandaPruning", "hold_sparsity", "prune"]

log = logging.getLogger(__name__)
STRUCTURED, UNSTRUCTURED = ("block", "flap"), ("magnitude", "wanda")
METHODS = (*STRUCTURED, *UNSTRUCTURED)


@dataclass
class PruneReport:
    """What `prune` changed. For unstructured methods parameters stay allocated; see `sparsity`."""

    method: str
    ratio: float
    importance: str | None
    layers: list[int]
    params_before: int
    params_after: int
    llm_params_before: int  # decoder stack + embeddings, without the output head
    llm_params_after: int
    llm_bytes_before: int
    llm_bytes_after: int
    layer_widths: list[dict] = field(default_factory=list)
    sparsity: float | None = None  # zero fraction of the pruned projections (unstructured)

    def summary(self) -> str:
        line = (f"prune[{self.method}, ratio={self.ratio}]: params {self.params_before:,} -> {self.params_after:,}, "
                f"LLM {self.llm_params_before:,} -> {self.llm_params_after:,}")
        return line if self.sparsity is None else f"{line}, sparsity {self.sparsity:.3f}"


def prune(model: nn.Module, config: float | PruningConfig | None = None, importance: str | Importance | None = None,
          method: str = "block", calibration: Calibration | None = None, layers: Iterable[int] | None = None,
          round_to: int | None = None, batch_size: int = 4, bias_compensation: bool = True, *,
          ratio: float | None = None) -> nn.Module:
    """Prune the VLA's language model in place and return it (report in `model.prune_report`).

    `config` is a typed config (`BlockPruning(ratio=0.9)`, `FlapPruning`, `MagnitudePruning`,
    `WandaPruning`; `calibration` is passed beside it) or the shorthand `ratio` (positional or
    `ratio=`) with the keyword settings below.

    - `method="block"`: remove `ratio` of the KV groups of heads and of the MLP channels in each
      pruned layer, ranked by `importance`: "taylor" (default; LLM-Pruner's `param_mix`, needs
      `calibration`), "taylor_vectorize" / "taylor_param_first" / "taylor_param_second" /
      "taylor_param_mix" (LLM-Pruner's other `--taylor` modes), "l1", "l2", "random", or a callable
      `Group -> scores`.
    - `method="flap"`: FLAP; `ratio` of the prunable parameters of the chosen layers is removed
      with per-layer widths; `bias_compensation` folds removed channels' mean inputs into biases.
    - `method="magnitude"` / `"wanda"`: zero `ratio` of each projection's weights (Wanda: per
      output row, scored with calibration activations); sparsity is held through fine-tuning.

    `layers`: decoder layer indices to prune; default all but the first and last (structured) or
    all (unstructured). `round_to`: kept widths (heads x head_dim, MLP channels) are multiples of it.
    `calibration`: robot samples `{"image", "instruction", "action"}` or ready batches.
    """
    if config is not None and ratio is not None:
        raise ValueError(f"pass config={config!r} or ratio={ratio!r}, not both")
    if isinstance(config, tuple(METHOD_OF)):
        flat = {"importance": importance, "method": method, "layers": layers, "round_to": round_to,
                "batch_size": batch_size, "bias_compensation": bias_compensation}
        if flat != {"importance": None, "method": "block", "layers": None, "round_to": None, "batch_size": 4,
                    "bias_compensation": True}:
            raise ValueError(f"config={config!r} holds the settings; pass only calibration= beside it")
        return prune(model, calibration=calibration, **as_arguments(config))
    ratio = config if ratio is None else ratio
    layer_list = _validate(model, ratio, importance, method, calibration, layers, round_to, batch_size)
    groups = layer_groups(model, layer_list) if method in STRUCTURED else []
    if method == "block":
        check_plan(groups, ratio, round_to)

    sizes_before = component_sizes(model)
    batches = calibration_batches(model, calibration, batch_size) if calibration is not None else None
    sparsity = None
    if method == "block":
        importance = importance or "taylor"
        if importance in TAYLOR:
            criterion = TaylorImportance(model, groups, batches, TAYLOR[importance])
        else:
            criterion = NAMED[importance] if isinstance(importance, str) else importance
        prune_blocks(model, groups, criterion, ratio, round_to)
    elif method == "flap":
        prune_flap(model, groups, batches, ratio, round_to, bias_compensation)
    else:
        linears = decoder_linears(model, layer_list)
        if method == "magnitude":
            prune_magnitude(linears, ratio)
        else:
            prune_wanda(model, linears, batches, ratio)
        hold_sparsity(model)
        sparsity = zero_fraction(linears)

    if method in STRUCTURED:
        model.config.llm_layer_widths = model.recorded_layer_widths()
    sizes_after = component_sizes(model)
    name = importance if isinstance(importance, str) or importance is None else getattr(importance, "__name__",
                                                                                      type(importance).__name__)
    model.prune_report = PruneReport(
        method=method, ratio=ratio, importance=name, layers=layer_list,
        params_before=sizes_before["total"].params, params_after=sizes_after["total"].params,
        llm_params_before=sizes_before["language_model"].params, llm_params_after=sizes_after["language_model"].params,
        llm_bytes_before=sizes_before["language_model"].bytes, llm_bytes_after=sizes_after["language_model"].bytes,
        layer_widths=current_layer_widths(model.language_model), sparsity=sparsity,
    )
    log.info(model.prune_report.summary())
    return model


def _validate(model: nn.Module, ratio: float, importance: str | Callable | None, method: str,
              calibration: Calibration | None, layers: Iterable[int] | None, round_to: int | None,
              batch_size: int) -> list[int]:
    """Check every argument before any work; return the layer indices to prune."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; allowed: {METHODS}")
    if isinstance(ratio, bool) or not isinstance(ratio, Real) or not 0 < ratio < 1:
        raise ValueError(f"ratio={ratio!r} is out of range; allowed: a number strictly between 0 and 1")
    if method == "block":
        if not (importance is None or callable(importance) or importance in CRITERIA):
            raise ValueError(f"importance={importance!r} is unknown; allowed: {CRITERIA} or a callable Group -> scores")
    elif importance is not None:
        raise ValueError(f"importance={importance!r} applies only to method='block'; {method!r} has its own "
                         "criterion: allowed: importance=None")
    needs_data = method in ("flap", "wanda") or (method == "block" and (importance is None or importance in TAYLOR))
    if needs_data and calibration is None:
        criterion = method if method != "block" else f"importance={importance or 'taylor'!r}"
        raise ValueError(f"calibration is required for {criterion}; allowed: an iterable of samples "
                         "{'image', 'instruction', 'action'} or of batches (or importance in l1/l2/random)")
    if round_to is not None and (method not in STRUCTURED or isinstance(round_to, bool)
                                 or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to={round_to!r} is invalid; allowed: None, or a positive int with "
                         f"method in {STRUCTURED}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid; allowed: a positive int")
    n_layers = len(decoder_layers(model.language_model))
    if layers is None:
        return list(range(1, n_layers - 1)) if method in STRUCTURED else list(range(n_layers))
    layer_list = list(layers)
    if not layer_list or not all(isinstance(i, Integral) and 0 <= i < n_layers for i in layer_list):
        raise ValueError(f"layers={layers!r} is invalid; allowed: a non-empty list or range of decoder layer "
                         f"indices in [0, {n_layers})")
    return sorted({int(i) for i in layer_list})
