"""Demonstrations held as tensors on the training device, so a batch costs no host work per step.

`train_sft` builds each batch from Python samples on the host (stack, shift, resize, tokenize). That is
fine for a 7B model, whose forward pass dwarfs it, but it starves a GPU training a tiny policy: the
batch building, not the model, sets the pace. `ResidentDemos` tokenizes every sample once and keeps
the uint8 frames on the device; each step indexes, shifts and resizes on the device. The batches equal
`OpenVLAProcessor.batch`'s (same checks, normalisation, tokens and random shifts; rows padded to the
longest prompt of the whole set rather than of the batch, which the mid-padded layout makes equivalent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..modeling.processing import shift_images


class ResidentDemos:
    """`samples` (dicts with image, instruction, action) as device tensors; `len()` and `[i]` still work."""

    def __init__(self, samples: Sequence[dict[str, Any]], processor, norm_stats: dict | None,
                 device: str | torch.device = "cpu", unnorm_key: str | None = None) -> None:
        if len(samples) == 0:
            raise ValueError("samples is empty")
        self.samples, self.norm_stats, self.device = samples, norm_stats, torch.device(device)
        images, instructions, actions = processor.sample_arrays(samples, norm_stats, unnorm_key)
        if actions is None:
            raise ValueError("samples have no 'action'; training data needs the demonstrated actions")
        tokens = processor.tokenize(instructions, actions)
        self.input_ids = tokens["input_ids"].to(self.device)
        self.attention_mask = tokens["attention_mask"].to(self.device)
        self.images = images.to(self.device)

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
