"""Latency of `predict_action` per decode path (dynamic, static, compiled) at batch 1 and 8, CPU.

Random-weight models of the small presets plus `tiny-policy` at openvla-7b's depth (32 decoder
layers), the suite's instructions and random 128 px frames as in `profile()`. The decode paths take
turns call by call (so a background load slows each alike); `--warmup` untimed calls each, then
the median of `--iters` timed ones. `compiled` runs only for `--compiled` presets, and its compile
time (the first call of each batch size, not counted in the medians) is reported beside it.
Usage: python benchmarks/decode_table.py [--threads 1] [--iters 20]   (prints a markdown table)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from vla_compress.envs.tasks import ALL_TASKS, instruction
from vla_compress.modeling import build_model, preset_config

MODELS = {
    "tiny-policy": dict(),
    "tiny": dict(),
    "tiny-policy, 32 layers": dict(text_config={"num_hidden_layers": 32}),
}
PRESET = {"tiny-policy": "tiny-policy", "tiny": "tiny", "tiny-policy, 32 layers": "tiny-policy"}
BATCH_SIZES = (1, 8)


def inputs(batch: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    images = rng.integers(0, 256, size=(batch, 128, 128, 3), dtype=np.uint8)
    return images, [instruction(ALL_TASKS[int(i)]) for i in rng.choice(len(ALL_TASKS), size=batch)]


def seconds(model: torch.nn.Module, images: np.ndarray, texts: list[str], decode: str) -> float:
    start = time.perf_counter()
    model.predict_action(images, texts, decode=decode)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--compiled", nargs="*", default=["tiny-policy"], help="models to also run compiled")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), no GPU, fp32, "
          f"torch {torch.__version__}\n")
    print("| model | LM layers | batch | dynamic (ms) | static (ms) | static / dynamic | compiled (ms) "
          "| compiled / dynamic | compile time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, overrides in MODELS.items():
        torch.manual_seed(0)
        model = build_model(preset_config(PRESET[name], **overrides)).eval()
        decodes = ["dynamic", "static"] + (["compiled"] if name in args.compiled else [])
        with torch.inference_mode():
            for batch in BATCH_SIZES:
                compile_s = seconds(model, *inputs(batch, rng), "compiled") if "compiled" in decodes else None
                times: dict[str, list[float]] = {decode: [] for decode in decodes}
                for i in range(args.warmup + args.iters):
                    images, texts = inputs(batch, rng)
                    for decode in decodes:
                        elapsed = seconds(model, images, texts, decode)
                        if i >= args.warmup:
                            times[decode].append(elapsed)
                ms = {decode: 1e3 * statistics.median(t) for decode, t in times.items()}
                compiled = (f"{ms['compiled']:.1f} | {ms['compiled'] / ms['dynamic']:.2f} | {compile_s:.0f}"
                            if compile_s is not None else "– | – | –")
                print(f"| {name} | {model.config.text_config.num_hidden_layers} | {batch} | {ms['dynamic']:.1f} "
                      f"| {ms['static']:.1f} | {ms['static'] / ms['dynamic']:.2f} | {compiled} |", flush=True)


if __name__ == "__main__":
    main()
