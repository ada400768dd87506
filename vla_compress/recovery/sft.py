"""Supervised fine-tuning on demonstrations: OpenVLA's action-token cross-entropy.

AdamW with linear warm-up and cosine decay, gradient accumulation and clipping, optional LoRA
(peft), periodic held-out loss and success-rate evaluation, atomic checkpoints and exact resume.
Runs through `accelerate`, so one call trains on a CPU, a GPU, or several processes.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..modeling import OpenVLAForActionPrediction
from .checkpoint import (
    check_output_dir,
    last_good_checkpoint_note,
    latest_checkpoint,
    load_trainer_state,
    run_identity,
    run_state,
    save_checkpoint,
)
from .distributed import make_accelerator
from .metrics import MetricsLogger
from .validation import require_int, require_number

Sample = dict[str, Any]  # {"image": uint8 [H, W, 3], "instruction": str, "action": float32 [7]}


@dataclass
class SFTConfig:
    """Settings of the SFT stage. `data` is a map-style dataset or a sequence of samples; one with a
    `make_batch(model, indices, rng)` method (`vla_compress.data.ResidentDemos`) builds its own batches.

    A resume continues only the same run: the same starting model and the same fields, except those in
    `RESUME_MAY_CHANGE`."""

    RESUME_MAY_CHANGE: ClassVar[tuple[str, ...]] = (
        "output_dir", "resume", "progress", "log_every", "checkpoint_every", "eval_every", "eval_data", "eval_fn",
        "device")

    data: Sequence[Sample] | None = None
    steps: int = 10_000
    batch_size: int = 32
    grad_accum: int = 1
    learning_rate: float = 2e-4  # peak (after warm-up)
    weight_decay: float = 0.0
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    lora_rank: int | None = None  # None: full fine-tuning; else LoRA on the LM's linear layers
    augment: bool = True  # random shifts of the image, as OpenVLA's crop augmentation
    eval_data: Sequence[Sample] | None = None
    eval_every: int = 500
    eval_fn: Callable[[OpenVLAForActionPrediction], dict[str, float]] | None = None  # e.g. success rate
    output_dir: str | Path | None = None
    checkpoint_every: int = 500
    resume: bool = True
    seed: int = 0
    device: str = "cpu"
    unnorm_key: str | None = None
    log_every: int = 10
    progress: bool = True
    lr: float | None = None  # deprecated alias of learning_rate (one release)

    def __post_init__(self) -> None:
        if self.lr is not None:
            warnings.warn("SFTConfig.lr is deprecated; use SFTConfig.learning_rate (the name PPOConfig uses)",
                          DeprecationWarning, stacklevel=3)
            self.learning_rate, self.lr = self.lr, None

    def validate(self) -> None:
        if self.data is None:
            raise ValueError("SFTConfig.data is required: a dataset of {'image','instruction','action'} samples")
        if len(self.data) == 0:
            raise ValueError("SFTConfig.data is empty")
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "checkpoint_every", "log_every"):
            require_int(f"SFTConfig.{name}", getattr(self, name), 1)
        require_int("SFTConfig.warmup_steps", self.warmup_steps, 0)
        require_int("SFTConfig.seed", self.seed, 0)
        require_int("SFTConfig.lora_rank", self.lora_rank, 1, optional=True)
        require_number("SFTConfig.learning_rate", self.learning_rate)
        require_number("SFTConfig.weight_decay", self.weight_decay, inclusive=True)
        require_number("SFTConfig.max_grad_norm", self.max_grad_norm, allow_inf=True)  # < 0 would reverse the step
        require_number("SFTConfig.min_lr_ratio", self.min_lr_ratio, inclusive=True)
        if self.min_lr_ratio > 1:
            raise ValueError(f"SFTConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.output_dir is not None:
            check_output_dir(self.output_dir, self.resume)


def _norm_stats_of(data) -> dict | None:
    return getattr(data, "norm_stats", None)


def make_batch(model: OpenVLAForActionPrediction, samples: Sequence[Sample], unnorm_key: str | None = None,
               rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    """Samples -> a training batch whose rows end with the 7 normalised action tokens."""
    if samples and "action" not in samples[0]:
        raise ValueError("samples[0] has no 'action'; training data needs the demonstrated actions")
    return model.processor.batch(samples, model.config.norm_stats, unnorm_key, augment=rng)


@torch.no_grad()
def held_out_metrics(model: OpenVLAForActionPrediction, data: Sequence[Sample], batch_size: int = 32,
                     unnorm_key: str | None = None) -> dict[str, float]:
    """Mean action-token loss and token accuracy on held-out samples."""
    was_training = model.training
    model.eval()
    losses, correct, total = [], 0, 0
    for start in range(0, len(data), batch_size):
        samples = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        batch = {k: v.to(model.device) for k, v in make_batch(model, samples, unnorm_key).items()}
        out = model.action_forward(**batch, full_vocab=True)
        targets = batch["input_ids"][:, -7:]
        losses.append(torch.nn.functional.cross_entropy(out.vocab_logits.flatten(0, 1).float(),
                                                        targets.flatten()).item() * len(samples))
        correct += (out.vocab_logits.argmax(-1) == targets).sum().item()
        total += targets.numel()
    model.train(was_training)
    return {"eval/action_loss": sum(losses) / len(data), "eval/token_accuracy": correct / total}


def _apply_lora(model: OpenVLAForActionPrediction, rank: int) -> None:
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise ImportError("LoRA needs peft: pip install peft") from err
    config = LoraConfig(r=rank, lora_alpha=min(rank, 16), lora_dropout=0.0,
                        target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
    inject_adapter_in_model(config, model)


class ActionLoss(torch.nn.Module):
    """The model's action loss as a `forward`, so DDP (multi-process) sees the call and syncs gradients."""

    def __init__(self, model: OpenVLAForActionPrediction) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.model.action_loss(**batch)


def train_sft(model: OpenVLAForActionPrediction, config: SFTConfig) -> OpenVLAForActionPrediction:
    """Fine-tune `model` on `config.data`; returns the trained model (LoRA weights merged)."""
    config.validate()
    if model.processor is None:
        raise ValueError("model has no processor: load it with vla_compress.load_vla(...)")
    run = run_identity(model, config)  # the model as given: a resume must start from the same one
    if (stats := _norm_stats_of(config.data)) is not None:
        model.config.norm_stats = stats
    accelerator = make_accelerator(config.device, config.grad_accum)
    torch.manual_seed(config.seed)
    if config.lora_rank:
        _apply_lora(model, config.lora_rank)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = warmup_cosine(config.warmup_steps, config.steps, config.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    step = 0
    if config.output_dir and config.resume and (checkpoint := latest_checkpoint(config.output_dir)) is not None:
        state = load_trainer_state(checkpoint, run)
        model.load_state_dict(load_file(checkpoint / "model.safetensors"))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
    # The scheduler is stepped here once per optimizer update, not by accelerate (which would step it once
    # per process).
    prepared, optimizer = accelerator.prepare(ActionLoss(model), optimizer)
    main_process = accelerator.is_main_process
    logger = MetricsLogger(config.output_dir) if config.output_dir and main_process else None
    bar = tqdm(total=config.steps, initial=step, desc="sft", disable=not (config.progress and main_process))
    n, t0, first_step = len(config.data), time.time(), step
    while step < config.steps:
        loss_sum = 0.0
        for micro in range(config.grad_accum):
            rng = np.random.default_rng([config.seed, step, micro, accelerator.process_index])
            indices = rng.integers(0, n, size=config.batch_size)
            shift_rng = rng if config.augment else None
            if hasattr(config.data, "make_batch"):  # e.g. ResidentDemos: built on the device
                batch = config.data.make_batch(model, indices, shift_rng)
            else:
                batch = make_batch(model, [config.data[int(i)] for i in indices], config.unnorm_key, shift_rng)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.accumulate(prepared):
                loss = prepared(**batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"SFT loss is {loss.item()} at step {step}, which was not applied; "
                                             f"{last_good_checkpoint_note(config.output_dir)} (try a lower lr)")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm)
                    if not torch.isfinite(torch.as_tensor(grad_norm)):
                        raise FloatingPointError(
                            f"SFT gradient norm is {float(grad_norm)} at step {step}, which was not applied; "
                            f"{last_good_checkpoint_note(config.output_dir)} (try a lower lr)")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item() / config.grad_accum
        scheduler.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}")
        if logger and step % config.log_every == 0:
            logger.log(step, {"losses/action_loss": loss_sum, "charts/learning_rate": scheduler.get_last_lr()[0],
                              "losses/grad_norm": float(grad_norm),
                              "charts/steps_per_s": (step - first_step) / (time.time() - t0)})
        if step % config.eval_every == 0 or step == config.steps:
            metrics = {}
            if config.eval_data:
                metrics = held_out_metrics(model, config.eval_data, unnorm_key=config.unnorm_key)
            if config.eval_fn is not None:
                metrics.update(config.eval_fn(model))
            if logger and metrics:
                logger.log(step, metrics)
            model.train()
        due = step % config.checkpoint_every == 0 or step == config.steps
        if config.output_dir and main_process and due:
            save_checkpoint(config.output_dir, step, model, {
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **run_state(run, model)})
    bar.close()
    if logger:
        logger.close()
    return _merge_lora(model) if config.lora_rank else model


def warmup_cosine(warmup: int, total: int, floor: float) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay from 1 to `floor` (a fraction of the peak lr)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _merge_lora(model: OpenVLAForActionPrediction) -> OpenVLAForActionPrediction:
    """Fold LoRA adapters into their base layers so the model saves in the plain OpenVLA format."""
    from peft.tuners.lora import LoraLayer

    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(module, child_name, child.get_base_layer())
    return model
