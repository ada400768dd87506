"""LLM bytes, action agreement with fp32 and batch-1 latency per quantization method (tiny preset, CPU).

The tiny preset has random weights; its decoder weights are scaled x3 so that action logits are less
tied (as in tests/test_quantization.py). GPTQ calibrates on 4 samples that are not among the 16
evaluation samples. Greedy agreement compares decoded bins (one flip changes the rest of the action);
teacher-forced agreement and logit cosine compare each of the 7 steps given fp32's previous bins.
Usage: python benchmarks/quant_table.py [--threads 1]   (prints a markdown table)
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time

import numpy as np
import torch

from vla_compress import load_vla
from vla_compress.modeling import component_sizes
from vla_compress.quantization import quantize

METHODS = [("fp32", 0), ("bnb", 8), ("bnb", 4), ("gptq", 8), ("gptq", 4), ("quanto", 8), ("quanto", 4), ("aten", 8),
           ("aten", 4)]
COLOURS = ["red", "green", "blue", "yellow"]


def instructions(n: int, offset: int) -> list[str]:
    return [f"put the {COLOURS[(i + offset) % 4]} cube on the {COLOURS[(i + offset + 1) % 4]} plate" for i in range(n)]


def tiny_model() -> torch.nn.Module:
    model = load_vla("tiny", seed=0)
    with torch.no_grad():
        for name, param in model.language_model.named_parameters():
            if "layers" in name and param.ndim == 2:
                param.mul_(3.0)
    return model


def action_bins_and_logits(model: torch.nn.Module, images: np.ndarray, texts: list[str],
                           teacher: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy action bins `[B, 7]` and action logits `[B, 7, bins]` teacher-forced on `teacher` bins."""
    batch = model.processor(images, texts)
    bins = model.generate_action_indices(**batch)["action_indices"]
    forced = model.append_action_tokens(batch, bins if teacher is None else teacher)
    return bins, model.action_forward(**forced).action_logits


def median_latency_ms(model: torch.nn.Module, image: np.ndarray, text: str, repeats: int = 9) -> float:
    model.predict_action(image, [text])  # warm-up (bitsandbytes repacks on the first call)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_action(image, [text])
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    rng = np.random.default_rng(0)
    eval_images = rng.integers(0, 256, (16, 112, 112, 3), dtype=np.uint8)
    calib_images = rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    eval_texts, calib_texts = instructions(16, 0), instructions(4, 2)
    dense = tiny_model()
    # calibration samples carry the dense model's own greedy actions: what it decodes on them
    calibration = [{"image": image, "instruction": text, "action": action} for image, text, action
                   in zip(calib_images, calib_texts, dense.predict_action(calib_images, calib_texts))]
    with torch.no_grad():
        reference, reference_logits = action_bins_and_logits(dense, eval_images, eval_texts)
    fp16_bytes = component_sizes(dense)["language_model"].params * 2
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} thread(s), no GPU, fp32 compute, "
          f"torch {torch.__version__}\n")
    print("| method | bits | LLM bytes | vs fp16 | bins = fp32 (greedy) | bins = fp32 (teacher-forced) "
          "| logit cosine | median latency / action (batch 1) |")
    print("|---|---|---|---|---|---|---|---|")
    for method, bits in METHODS:
        model = tiny_model() if method == "fp32" else quantize(tiny_model(), bits, method, calibration=calibration)
        llm_bytes = component_sizes(model)["language_model"].bytes
        with torch.no_grad():
            bins, logits = action_bins_and_logits(model, eval_images, eval_texts, teacher=reference)
        greedy = (bins == reference).float().mean().item()
        forced = (logits.argmax(-1) == reference).float().mean().item()
        cosine = torch.nn.functional.cosine_similarity(logits, reference_logits, dim=-1).mean().item()
        latency = median_latency_ms(model, eval_images[:1], eval_texts[0])
        print(f"| {method} | {bits or 32} | {llm_bytes / 2**20:.2f} MiB | {llm_bytes / fp16_bytes:.2f} "
              f"| {greedy:.1%} | {forced:.1%} | {cosine:.3f} | {latency:.0f} ms |")
    print(f"\nfp16 LLM reference: {fp16_bytes / 2**20:.2f} MiB (embeddings and norms stay fp32 in every row)")


if __name__ == "__main__":
    main()
