"""The hardware floor of one action: how fast `predict_action` could be on this machine.

At batch 1 a VLA action is a prefill over the prompt (BOS, image patches, instruction) followed by six
single-token decode steps. Its floor here is

    floor = bytes read / memory bandwidth + FLOPs / matmul rate,

with both rates measured on the machine by `measure_rates` and the work counted by `action_cost`:
FLOPs by torch's `FlopCounterMode` over one real call, bytes as the weights each stage must stream (the
vision tower and projector once; the LM's decoder layers and the action rows of its output head once
per forward, prefill plus six steps; the looked-up embedding rows; the KV cache each step reads). The
sum, not the max, is the bound: it is what a perfect implementation that does not overlap the two
would take, and the ratio measured / floor says how much host overhead and kernel inefficiency cost.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vla_compress.envs.tasks import ALL_TASKS, instruction
from vla_compress.modeling.action_tokenizer import ACTION_DIM
from vla_compress.modeling.size import module_size

DECODE_STEPS = ACTION_DIM - 1  # the first action token comes from the prefill's last position


@dataclass
class MachineRates:
    """Measured sustained rates of one device: streaming read bandwidth and dense matmul throughput."""

    device: str
    dtype: str
    bytes_per_second: float
    flops_per_second: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ActionCost:
    """Work of one batch-1 action: FLOPs, bytes read, and the prefill length they were counted at."""

    flops: int
    bytes_read: int
    prefill_tokens: int
    prompt_tokens: int  # BOS and the instruction (the prefill also holds the image patches)

    def floor_seconds(self, rates: MachineRates) -> float:
        return self.bytes_read / rates.bytes_per_second + self.flops / rates.flops_per_second

    def to_dict(self) -> dict:
        return asdict(self)


def _best_seconds(fn, device: torch.device, repeats: int) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()  # warm-up: first-touch page faults, kernel selection
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def measure_rates(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  buffer_bytes: int = 512 * 2**20, matmul_size: int | None = None, repeats: int = 5) -> MachineRates:
    """Best-of-`repeats` read bandwidth (a sum over a buffer far larger than the caches) and matmul rate
    (square `matmul_size` products in `dtype`; 1024 on a CPU, 8192 on a GPU)."""
    device = torch.device(device)
    if buffer_bytes < 2**20 or repeats < 1:
        raise ValueError(f"buffer_bytes must be >= 1 MiB and repeats >= 1, got {buffer_bytes}, {repeats}")
    if matmul_size is not None and matmul_size < 1:
        raise ValueError(f"matmul_size must be None or >= 1, got {matmul_size}")
    buffer = torch.ones(buffer_bytes // 4, dtype=torch.float32, device=device)
    read = _best_seconds(buffer.sum, device, repeats)
    del buffer
    n = matmul_size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    matmul = _best_seconds(lambda: a @ b, device, repeats)
    return MachineRates(device=str(device), dtype=str(dtype).removeprefix("torch."),
                        bytes_per_second=buffer_bytes / read, flops_per_second=2 * n**3 / matmul)


def _kv_bytes_per_position(model: nn.Module) -> int:
    """Bytes of keys and values one cached position holds across all layers (pruned widths included)."""
    # the cache holds the activations' dtype: the input embeddings' (quantized linears may hold no floats)
    element = model.language_model.get_input_embeddings().weight.element_size()
    total = 0
    for layer in model.language_model.model.layers:
        attention = layer.self_attn
        total += (attention.k_proj.out_features + attention.v_proj.out_features) * element
    return total


def weight_bytes_read(model: nn.Module, prompt_tokens: int, prefill_tokens: int) -> int:
    """Bytes one batch-1 action of `model` reads at its stored precision, for a prompt of `prompt_tokens` text
    tokens and `prefill_tokens` in all (no forward pass: quantize a model and recount without rerunning it)."""
    for name, value in (("prompt_tokens", prompt_tokens), ("prefill_tokens", prefill_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if prefill_tokens < prompt_tokens:
        raise ValueError(f"prefill_tokens={prefill_tokens} must be >= prompt_tokens={prompt_tokens}")
    lm = model.language_model
    head, embed = lm.get_output_embeddings(), lm.get_input_embeddings()
    decoder = module_size(lm.model).bytes - module_size(embed).bytes
    weight = head.weight
    # a plain head reads only the 256 action rows (`_action_logits`); a quantized head computes all rows
    head_bytes = (len(model.action_token_ids) * weight.shape[1] * weight.element_size()
                  if type(head) is nn.Linear else module_size(head).bytes)
    embed_bytes = (prompt_tokens + DECODE_STEPS) * embed.weight.shape[1] * embed.weight.element_size()
    kv_reads = _kv_bytes_per_position(model) * sum(prefill_tokens + step for step in range(1, DECODE_STEPS + 1))
    weights_once = module_size(model.vision_backbone).bytes + module_size(model.projector).bytes
    return int(weights_once + (1 + DECODE_STEPS) * (decoder + head_bytes) + embed_bytes + kv_reads)


def action_cost(model: nn.Module, image_size: int = 128) -> ActionCost:
    """FLOPs and bytes read by one batch-1 `predict_action` call of `model` (an OpenVLA policy).

    FLOPs are counted on the call itself, so quantized layers whose kernels torch cannot count (bitsandbytes,
    quanto) under-report; count them on the model before quantizing it (shapes, not storage, set FLOPs) and
    recount the bytes after with `weight_bytes_read`.
    """
    patches: list[int] = []
    hook = model.projector.register_forward_hook(lambda module, args, out: patches.append(out.shape[1]))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(1, image_size, image_size, 3), dtype=np.uint8)
    text = instruction(ALL_TASKS[0])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:  # inference tensors would stick to quantizers
            model.predict_action(image, [text])
    finally:
        hook.remove()
        model.train(was_training)
    prompt_tokens = int(model._processor()(image, [text])["input_ids"].shape[1])
    prefill = prompt_tokens + patches[0]
    return ActionCost(flops=int(counter.get_total_flops()), bytes_read=weight_bytes_read(model, prompt_tokens, prefill),
                      prefill_tokens=prefill, prompt_tokens=prompt_tokens)
