"""Demonstrations held as tensors on the training device, so a batch costs no host work per step.

`train_sft` builds each batch from Python samples on the host (stack, shift, resize, tokenize). That is
fine for a 7B model, whose forward pass dwarfs it, but it starves a GPU training a tiny policy: the
batch building, not the model, sets the pace. `ResidentDemos` tokenizes every sample once and keeps
the uint8 frames on the device; each step indexes, shifts and resizes on the device. The batches equal
`make_batch`'s (same normalisation, tokens and random shifts; rows padded to the longest prompt of the
whole set rather than of the batch, which the mid-padded layout makes equivalent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..modeling import normalize_actions


class ResidentDemos:
    """`samples` (dicts with image, instruction, action) as device tensors; `len()` and `[i]` still work."""

    def __init__(self, samples: Sequence[dict[str, Any]], processor, norm_stats: dict | None,
                 device: str | torch.device = "cpu", unnorm_key: str | None = None) -> None:
        if len(samples) == 0:
            raise ValueError("samples is empty")
        self.samples, self.norm_stats, self.device = samples, norm_stats, torch.device(device)
        actions = np.stack([np.asarray(s["action"], np.float32) for s in samples])
        if norm_stats:
            actions = normalize_actions(actions, norm_stats, unnorm_key)
        tokens = processor.tokenize([s["instruction"] for s in samples], actions)
        self.input_ids = tokens["input_ids"].to(self.device)
        self.attention_mask = tokens["attention_mask"].to(self.device)
        self.images = torch.as_tensor(np.stack([np.asarray(s["image"]) for s in samples])).to(self.device)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.samples[index]

    def make_batch(self, model, indices: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """The training batch of rows `indices`; `rng` draws `shift_images`' offsets (None: no shift)."""
        rows = torch.as_tensor(np.asarray(indices), device=self.device)
        images = self.images[rows]
        if rng is not None:
            images = shift_images(images, rng)
        return {"pixel_values": model.processor.pixel_values(images), "input_ids": self.input_ids[rows],
                "attention_mask": self.attention_mask[rows]}


def shift_images(images: torch.Tensor, rng: np.random.Generator, pad_fraction: float = 0.06) -> torch.Tensor:
    """Shift each image of a uint8 `[B, H, W, 3]` tensor by up to `pad_fraction` of its size, on its device.

    Edge (replicate) padding, then a random crop back to the input size; the offsets come from `rng`, so
    SFT's host batches (`make_batch`) and `ResidentDemos` draw the same shifts for the same generator.
    """
    batch, height, width, _ = images.shape
    pad = max(1, int(round(pad_fraction * height)))
    # replicate-pad needs a float NCHW tensor; values stay integers, so the uint8 round trip is exact
    padded = F.pad(images.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="replicate")
    offsets = torch.as_tensor(rng.integers(0, 2 * pad + 1, size=(batch, 2)), device=images.device)
    ys = offsets[:, :1] + torch.arange(height, device=images.device)  # [B, H]
    xs = offsets[:, 1:] + torch.arange(width, device=images.device)  # [B, W]
    b = torch.arange(batch, device=images.device)[:, None, None]
    shifted = padded.permute(0, 2, 3, 1)[b, ys[:, :, None], xs[:, None, :]]
    return shifted.to(torch.uint8)
