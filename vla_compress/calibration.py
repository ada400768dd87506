"""Calibration data for pruning and GPTQ: robot samples -> model batches, and per-token module inputs.

One calibration type for every criterion: an iterable of robot samples `{"image": uint8 [H, W, 3],
"instruction": str, "action": float[7]}` with actions in the dataset's units (normalised with the
model's `norm_stats`, as SFT does: `OpenVLAProcessor.batch`), or of ready batches (dicts with
`pixel_values` and `input_ids`, as `model.processor` returns them).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

Calibration = Iterable[Mapping]


def calibration_batches(model: nn.Module, calibration: Calibration, batch_size: int = 4) -> Iterator[dict]:
    """Model batches (on the model's device) with `pixel_values`, `input_ids` and `attention_mask`."""
    pending: list[Mapping] = []
    for index, item in enumerate(calibration):
        if not isinstance(item, Mapping):
            raise ValueError(f"calibration items must be samples (dicts with image, instruction, action) or "
                             f"batches (dicts with pixel_values, input_ids); item {index} is a {type(item).__name__}")
        if "pixel_values" in item:
            yield _to_device(model, item)
            continue
        pending.append(item)
        if len(pending) == batch_size:
            yield _to_device(model, _collate(model, pending, index + 1 - batch_size))
            pending = []
    if pending:
        yield _to_device(model, _collate(model, pending, index + 1 - len(pending)))


def _collate(model: nn.Module, samples: list[Mapping], first: int) -> dict:
    """The SFT batch of `samples` (calibration items `first`...); errors name the calibration item."""
    try:
        if "action" not in samples[0]:
            raise ValueError("samples[0] has no 'action'; calibration samples need the demonstrated actions")
        return model._processor().batch(samples, model.config.norm_stats)
    except ValueError as error:
        raise ValueError(f"calibration items {first}..{first + len(samples) - 1}: {error}") from None


def _to_device(model: nn.Module, batch: Mapping) -> dict:
    batch = dict(batch)
    batch.setdefault("attention_mask", torch.ones_like(torch.as_tensor(batch["input_ids"])))
    keys = ("pixel_values", "input_ids", "attention_mask")
    return {key: torch.as_tensor(batch[key]).to(model.device) for key in keys}


def token_mask(attention_mask: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Which of the LM's `seq_len` positions hold real tokens (the image patches follow BOS)."""
    n_patches = seq_len - attention_mask.shape[1]
    patches = attention_mask.new_ones(attention_mask.shape[0], n_patches)
    return torch.cat([attention_mask[:, :1], patches, attention_mask[:, 1:]], dim=1).bool()


@torch.no_grad()
def collect_inputs(model: nn.Module, batches: Iterable[dict], modules: Mapping[Hashable, nn.Module],
                   update: Callable[[Hashable, torch.Tensor], None]) -> int:
    """Run the batches teacher-forced; call `update(key, x)` with each module's inputs `x [tokens, features]`.

    Inside the LM (inputs over the whole sequence of image patches + text) padding positions are left
    out; the vision backbones and projector see only image tokens and the output head only the positions
    that predict the action tokens, all real. Returns the number of batches run.
    """
    current: dict[str, Any] = {}

    def lm_length(module: nn.Module, args: tuple, patches: torch.Tensor) -> None:
        current["lm_length"] = patches.shape[1] + current["attention_mask"].shape[1]

    def hook(key: Hashable) -> Callable:
        def record(module: nn.Module, args: tuple) -> None:
            x, mask = args[0], current["attention_mask"]
            if x.ndim == 3 and x.shape[1] == current["lm_length"]:
                update(key, x[token_mask(mask, x.shape[1])])
            else:
                update(key, x.reshape(-1, x.shape[-1]))
        return record

    handles = [module.register_forward_pre_hook(hook(key)) for key, module in modules.items()]
    handles.append(model.projector.register_forward_hook(lm_length))  # the projector's tokens join the text
    was_training, n_batches = model.training, 0
    model.eval()
    try:
        for batch in batches:
            current.update(attention_mask=batch["attention_mask"], lm_length=None)
            model.action_forward(**batch, full_vocab=True)
            n_batches += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("calibration is empty; pass at least one sample or batch")
    return n_batches
