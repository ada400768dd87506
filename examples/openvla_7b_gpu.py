"""RLRC on OpenVLA-7B with the paper's settings: 90% Taylor pruning, SFT, PPO, 4-bit bitsandbytes.

Needs a CUDA GPU (Taylor scoring of the bf16 model peaks near 20 GB at batch 4, see docs/pruning.md),
the `quant` and `sim` extras, the public checkpoint (downloaded from the Hugging Face hub) and a demo
directory (`vla-compress demos demos --image-size 224`).

    python examples/openvla_7b_gpu.py --demos demos --output openvla-rlrc-4bit
    python examples/openvla_7b_gpu.py --dry-run        # no GPU, no download: the plan and parameter counts
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

from vla_compress import PPOConfig, SFTConfig, component_sizes, load_vla, prune, quantize, recover

PLAN = {
    "load": "openvla/openvla-7b, bfloat16, cuda",
    "prune": "block-wise, ratio 0.9, Taylor importance, layers 1..30, calibration on demo samples",
    "sft": "10,000 steps on the demos (AdamW, warm-up + cosine)",
    "ppo": "600,000 env steps in PutCubeOnPlate-v1 (IND tasks), 64 envs",
    "quantize": "4-bit NF4 bitsandbytes, bfloat16 compute, decoder linears only",
}


def print_plan() -> None:
    for stage, what in PLAN.items():
        print(f"{stage:>9}: {what}")


def dry_run() -> None:
    """Build the openvla-7b preset on the meta device (shapes only) and count parameters before and after."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the preset's weights are random: only shapes are used here
        model = load_vla("openvla-7b", device="meta", dtype="bfloat16")
    dense = component_sizes(model)
    model = prune(model, ratio=0.9, importance="l1")  # counts do not depend on the criterion
    pruned = component_sizes(model)
    print_plan()
    for name in ("language_model", "total"):
        print(f"{name:>14}: {dense[name].params:,} -> {pruned[name].params:,} parameters")


def calibration_samples(demos, count: int) -> list[dict]:
    return [demos[i] for i in np.linspace(0, len(demos) - 1, count).astype(int)]


def run(demo_dir: Path, output: Path, calibration: int, sft_batch_size: int, num_envs: int) -> None:
    """The full pipeline on a GPU; stages log to `output/runs/`."""
    from vla_compress.data import DemoDataset

    if not torch.cuda.is_available():
        raise SystemExit("this example needs a CUDA GPU; try --dry-run")
    demos = DemoDataset(demo_dir)
    print_plan()
    model = load_vla("openvla/openvla-7b", device="cuda", dtype="bfloat16")
    model = prune(model, ratio=0.9, importance="taylor", calibration=calibration_samples(demos, calibration))
    print(model.prune_report.summary())
    model = recover(
        model,
        sft=SFTConfig(
            data=demos,
            steps=10_000,
            batch_size=sft_batch_size,
            device="cuda",
            output_dir=output / "runs" / "sft",
        ),
        rl=PPOConfig(
            env="maniskill",
            tasks="ind",
            num_envs=num_envs,
            total_env_steps=600_000,
            device="cuda",
            output_dir=output / "runs" / "ppo",
        ),
    )
    model = quantize(model, bits=4, method="bnb", compute_dtype="bfloat16")
    model.save_pretrained(output)
    print(f"saved to {output}; reload with load_vla({str(output)!r}, device='cuda')")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan and parameter counts only")
    parser.add_argument("--demos", type=Path, help="demo directory (required without --dry-run)")
    parser.add_argument("--output", type=Path, default=Path("openvla-rlrc-4bit"))
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--sft-batch-size", type=int, default=32)
    parser.add_argument("--num-envs", type=int, default=64)
    args = parser.parse_args()
    if args.dry_run:
        dry_run()
    elif args.demos is None:
        parser.error("--demos is required (or pass --dry-run)")
    else:
        run(args.demos, args.output, args.calibration_samples, args.sft_batch_size, args.num_envs)


if __name__ == "__main__":
    main()
