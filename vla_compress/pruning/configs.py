"""Typed settings of `prune`, one per method (as torchao's `quantize_` takes a config object).

`prune(model, BlockPruning(ratio=0.9), calibration=demos)` equals the shorthand
`prune(model, 0.9, method="block", importance="taylor", calibration=demos)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class BlockPruning:
    """LLM-Pruner block-wise: remove `ratio` of the KV groups of heads and of the MLP channels of each
    pruned layer, ranked by `importance` (see `CRITERIA`, or a callable `Group -> scores`)."""

    ratio: float
    importance: str | Callable = "taylor"
    layers: Sequence[int] | None = None
    round_to: int | None = None
    batch_size: int = 4


@dataclass(frozen=True)
class FlapPruning:
    """FLAP: fluctuation scores, one global threshold, per-layer widths, bias compensation."""

    ratio: float
    layers: Sequence[int] | None = None
    round_to: int | None = None
    batch_size: int = 4
    bias_compensation: bool = True


@dataclass(frozen=True)
class MagnitudePruning:
    """Unstructured: zero the `ratio` smallest-magnitude weights of each projection."""

    ratio: float
    layers: Sequence[int] | None = None


@dataclass(frozen=True)
class WandaPruning:
    """Wanda: zero `ratio` of each output row by |W| x input-activation norm."""

    ratio: float
    layers: Sequence[int] | None = None
    batch_size: int = 4


PruningConfig = BlockPruning | FlapPruning | MagnitudePruning | WandaPruning
METHOD_OF: dict[type, str] = {BlockPruning: "block", FlapPruning: "flap", MagnitudePruning: "magnitude",
                              WandaPruning: "wanda"}


def as_arguments(config: PruningConfig) -> dict[str, Any]:
    """`prune`'s keyword arguments for a typed config."""
    return {"method": METHOD_OF[type(config)], **asdict(config)}
