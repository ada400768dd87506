"""`load_vla`: the one door every checkpoint comes through.

It sits above `vla_compress.modeling` (presets, dense and pruned checkpoints) and
`vla_compress.quantization` (checkpoints whose layers must be rebuilt quantized before their weights
load), so neither imports the other's way of loading.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .modeling.config import OpenVLAConfig
from .modeling.loading import load_dense, load_from
from .modeling.modeling_openvla import OpenVLAForActionPrediction
from .quantization import load_quantized


def load_checkpoint_dir(path: Path, config: OpenVLAConfig, device: str | torch.device,
                        dtype: torch.dtype | None) -> OpenVLAForActionPrediction:
    """A checkpoint directory: quantized ones rebuild their layers first, the others load as saved."""
    if config.quantization:
        return load_quantized(path, config, device=device, dtype=dtype)
    return load_dense(path, config, device, dtype)


def load_vla(name_or_path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
             seed: int = 0) -> OpenVLAForActionPrediction:
    """Load an OpenVLA policy with its processor attached (`model.processor`).

    `name_or_path`: a preset (`"tiny"`, `"openvla-7b"`: random weights; `"tiny-maniskill"`: the
    shipped trained policy), a local directory in the OpenVLA Hugging Face format (dense, pruned or
    quantized), or a hub id such as `"openvla/openvla-7b"` (downloaded with huggingface_hub). `dtype`
    None keeps the stored one (float32 for the shipped presets, which are stored in float16).
    """
    return load_from(name_or_path, device, dtype, seed, load_checkpoint_dir)
