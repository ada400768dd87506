"""Calibration data -> model batches, and per-token inputs of chosen modules.

Calibration data is an iterable of robot samples `{"image": uint8 [H, W, 3], "instruction": str,
"action": normalized float[7]}` (batched with `model.processor`) or of ready batches (dicts with
`pixel_values` and `input_ids`, as `model.processor` returns them).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

Calibration = Iterable[Mapping]


def calibration_batches(model: nn.Module, calibration: Calibration, batch_size: int = 4) -> Iterator[dict]:
    """Model batches (on the model's device) with `pixel_values`, `input_ids` and `attention_mask`."""
    pending: list[Mapping] = []
    for item in calibration:
        if "pixel_values" in item:
            yield _to_device(model, item)
        elif {"image", "instruction", "action"} <= set(item):
            pending.append(item)
            if len(pending) == batch_size:
                yield _to_device(model, _collate(model, pending))
                pending = []
        else:
            raise ValueError(f"calibration items must be samples with keys image/instruction/action or batches "
                             f"with pixel_values/input_ids; got keys {sorted(item)}")
    if pending:
        yield _to_device(model, _collate(model, pending))


def _collate(model: nn.Module, samples: list[Mapping]) -> dict:
    images = np.stack([np.asarray(s["image"]) for s in samples])
    actions = np.stack([np.asarray(s["action"], dtype=np.float32) for s in samples])
    return model._processor()(images, [s["instruction"] for s in samples], actions=actions)


def _to_device(model: nn.Module, batch: Mapping) -> dict:
    batch = dict(batch)
    batch.setdefault("attention_mask", torch.ones_like(batch["input_ids"]))
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
    """Run the batches; call `update(key, x)` with each module's inputs `x [tokens, features]`.

    Padding positions are left out. Returns the number of batches run.
    """
    current: dict[str, torch.Tensor] = {}

    def hook(key: Hashable) -> Callable:
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0]
            update(key, x[token_mask(current["attention_mask"], x.shape[1])])
        return record

    handles = [module.register_forward_pre_hook(hook(key)) for key, module in modules.items()]
    was_training, n_batches = model.training, 0
    model.eval()
    try:
        for batch in batches:
            current["attention_mask"] = batch["attention_mask"]
            model.action_forward(**batch)
            n_batches += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("calibration is empty; pass at least one sample or batch")
    return n_batches
