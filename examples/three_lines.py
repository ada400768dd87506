"""The whole RLRC pipeline on a small policy: load, prune, recover (SFT), quantize, save, reload.

    python examples/three_lines.py                 # tiny-maniskill if shipped, else tiny; synthetic samples
    python examples/three_lines.py --demos demos   # SFT and calibration on `vla-compress demos` data

Every stage is one call; the default arguments keep it to a minute on a laptop CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vla_compress import SFTConfig, component_sizes, load_vla, prune, quantize, recover
from vla_compress.envs import TASKS_IND, instruction


def synthetic_samples(count: int, image_size: int = 64, seed: int = 0) -> list[dict]:
    """Random frames with suite instructions and actions in [-1, 1]: enough to exercise every stage."""
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8),
            "instruction": instruction(TASKS_IND[i % len(TASKS_IND)]),
            "action": rng.uniform(-1, 1, 7).astype(np.float32),
        }
        for i in range(count)
    ]


def demo_samples(path: Path, count: int) -> list[dict]:
    """`count` samples spread over a demo directory."""
    from vla_compress.data import DemoDataset

    dataset = DemoDataset(path)
    return [dataset[i] for i in np.linspace(0, len(dataset) - 1, count).astype(int)]


def load(preset: str | None):
    """The requested preset, or tiny-maniskill when shipped, else tiny."""
    try:
        return load_vla(preset or "tiny-maniskill")
    except ValueError:
        if preset:
            raise
        return load_vla("tiny")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="default: tiny-maniskill if shipped, else tiny")
    parser.add_argument("--demos", type=Path, default=None, help="demo directory; default synthetic samples")
    parser.add_argument("--samples", type=int, default=16, help="samples for calibration and SFT")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--method", default="bnb", help="bnb, quanto or gptq")
    parser.add_argument("--output", type=Path, default=Path("three-lines-out"))
    args = parser.parse_args()

    samples = demo_samples(args.demos, args.samples) if args.demos else synthetic_samples(args.samples)
    model = load(args.preset)
    dense = component_sizes(model)["total"]

    model = prune(model, ratio=args.ratio, importance="taylor", calibration=samples)
    print(model.prune_report.summary())
    model = recover(
        model,
        sft=SFTConfig(
            data=samples,
            steps=args.sft_steps,
            batch_size=4,
            warmup_steps=args.sft_steps // 10,
            progress=False,
        ),
    )
    model = quantize(model, bits=args.bits, method=args.method, calibration=samples)  # gptq uses it
    model.save_pretrained(args.output)

    reloaded = load_vla(args.output)
    images, instructions = np.stack([s["image"] for s in samples[:2]]), [s["instruction"] for s in samples[:2]]
    same = np.allclose(
        model.predict_action(images, instructions), reloaded.predict_action(images, instructions)
    )
    compressed = component_sizes(reloaded)["total"]
    print(
        f"dense {dense.params / 1e6:.2f} M params, {dense.bytes / 2**20:.1f} MiB -> compressed "
        f"{compressed.params / 1e6:.2f} M params, {compressed.bytes / 2**20:.1f} MiB "
        f"({args.bits}-bit {args.method})"
    )
    print(f"saved to {args.output}; reloaded actions identical: {same}")


if __name__ == "__main__":
    main()
