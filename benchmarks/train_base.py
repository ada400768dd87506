"""Train the shipped base policy `tiny-maniskill` from scratch by SFT on the suite's expert demos.

    python benchmarks/train_base.py                      # demos -> SFT -> evaluation -> package data
    python benchmarks/train_base.py --steps 20 --eval-episodes 1 --output-dir /tmp/base --no-ship  # smoke
    python benchmarks/train_base.py --init tiny-maniskill --output-dir runs/more   # train the shipped policy further
    python benchmarks/train_base.py --device cuda --batch-size 256 --steps 20000 --no-eval --no-ship  # on a GPU

Resumable: rerun the same command after an interruption; demos, checkpoints and the evaluation are
cached in `--output-dir`. Seeds are fixed. The result is written in the OpenVLA format (fp16 storage,
loads as fp32) to `vla_compress/presets/tiny-maniskill` together with `eval.json`.

The training samples live on `--device` (`ResidentDemos`: frames as uint8 tensors, tokens built once), so
on a GPU the steps are not held back by host-side batch building. `--no-eval` skips the simulator
evaluation (for a machine without the simulator: evaluate the result elsewhere with `vla-compress evaluate`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from vla_compress.data import DemoDataset, ResidentDemos, generate_demos
from vla_compress.envs.tasks import TASKS_IND
from vla_compress.evaluation import evaluate
from vla_compress.modeling import build_model, load_vla, preset_config
from vla_compress.modeling.presets import SHIPPED_PRESETS
from vla_compress.recovery.checkpoint import latest_checkpoint
from vla_compress.recovery.sft import SFTConfig, train_sft

REPO = Path(__file__).resolve().parents[1]
PACKAGE_PRESET_DIR = REPO / "vla_compress" / "presets" / SHIPPED_PRESETS["tiny-maniskill"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/train_base"))
    parser.add_argument("--demos", type=Path, default=None, help="demo directory (default: <output-dir>/demos)")
    parser.add_argument("--episodes-per-task", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=128, help="camera size; the model resizes to its own")
    parser.add_argument("--preset", default="tiny", help="architecture preset to train from scratch")
    parser.add_argument("--init", default=None,
                        help="start from these weights instead of scratch (e.g. tiny-maniskill, to train further)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds of training: --steps is set from a 30-step timing on this machine "
                             "(recorded in <output-dir>/steps.json, so a resumed run keeps its schedule)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=200, help="warm-up steps (at most a tenth of --steps)")
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--held-out-episodes", type=int, default=2, help="per task, for the held-out loss")
    parser.add_argument("--eval-episodes", type=int, default=10, help="per task, IND and OOD")
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-ship", action="store_true", help="do not copy the result into the package")
    parser.add_argument("--no-eval", action="store_true", help="train only (no simulator needed); implies --no-ship")
    return parser.parse_args()


def split_by_episode(dataset: DemoDataset, held_out_per_task: int) -> tuple[list[dict], list[dict]]:
    """Load all samples into memory; the last `held_out_per_task` episodes of each task are held out."""
    episodes: dict[tuple[str, int], list[dict]] = {}
    for sample in dataset:
        episodes.setdefault((sample["task"], sample["episode"]), []).append(sample)
    train, held_out = [], []
    for task in sorted({task for task, _ in episodes}):
        ids = sorted(ep for t, ep in episodes if t == task)
        for ep in ids:
            (held_out if ep in ids[len(ids) - held_out_per_task:] else train).extend(episodes[(task, ep)])
    return train, held_out


def steps_for_budget(model, data: ResidentDemos, args: argparse.Namespace, probe_steps: int = 30) -> int:
    """Steps that fit `args.time_budget` seconds, timed on a copy of `model` (decided once per output dir)."""
    record = args.output_dir / "steps.json"
    if record.exists():
        return json.loads(record.read_text())["steps"]
    probe = copy.deepcopy(model)
    config = SFTConfig(data=data, steps=5, batch_size=args.batch_size, lr=args.lr, progress=False,
                       device=args.device)
    train_sft(probe, config)  # warm-up (allocator, kernels)
    start = time.perf_counter()
    train_sft(probe, dataclasses.replace(config, steps=probe_steps))
    seconds_per_step = (time.perf_counter() - start) / probe_steps
    # 10% margin for the held-out evaluations and checkpoints
    steps = max(1, int(0.9 * args.time_budget / seconds_per_step))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"steps": steps, "seconds_per_step": seconds_per_step,
                                  "time_budget": args.time_budget, "batch_size": args.batch_size}))
    print(f"time budget {args.time_budget:.0f} s at {seconds_per_step * 1e3:.1f} ms/step: {steps} steps")
    return steps


def cached_evaluation(model, path: Path, args: argparse.Namespace) -> dict:
    """IND + OOD success of `model`; reuses `path` when an earlier run of the same settings wrote it."""
    if path.exists():
        cached = json.loads(path.read_text())
        if cached["episodes_per_task"] == args.eval_episodes and cached["seed"] == args.seed:
            return cached
    return evaluate(model, tasks="all", episodes_per_task=args.eval_episodes, num_envs=args.num_envs,
                    seed=args.seed, image_size=args.image_size, output=path).to_dict()


def eval_table(result: dict) -> str:
    """Success rate per task as a markdown table (IND tasks first)."""
    lines = ["| task | split | success |", "|---|---|---|"]
    for task, rate in sorted(result["success_rate"].items(), key=lambda kv: (kv[0] not in TASKS_IND, kv[0])):
        lines.append(f"| {task} | {'IND' if task in TASKS_IND else 'OOD'} | {100 * rate:.0f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True  # GPU only: TF32 matmuls for the fp32 weights
    torch.backends.cudnn.allow_tf32 = True
    out = args.output_dir
    demos = args.demos or out / "demos"
    if not (demos / "norm_stats.json").exists():
        generate_demos(demos, tasks="ind", episodes_per_task=args.episodes_per_task, image_size=args.image_size,
                       seed=args.seed)
    dataset = DemoDataset(demos)
    train, held_out = split_by_episode(dataset, args.held_out_episodes)
    print(f"demos: {dataset.num_episodes} episodes, {len(train)} train / {len(held_out)} held-out samples")

    if args.init:
        model = load_vla(args.init, device=args.device, dtype=torch.float32)
    else:
        model = build_model(preset_config(args.preset), seed=args.seed)
    rng = np.random.default_rng(args.seed)
    eval_subset = [held_out[i] for i in rng.choice(len(held_out), size=min(256, len(held_out)), replace=False)]
    model.to(args.device)
    data = ResidentDemos(train, model.processor, dataset.norm_stats, device=args.device)
    if args.time_budget:
        args.steps = steps_for_budget(model, data, args)
    model = train_sft(model, SFTConfig(
        data=data, eval_data=eval_subset,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=min(args.warmup, args.steps // 10),
        eval_every=args.checkpoint_every, checkpoint_every=args.checkpoint_every, output_dir=out / "sft",
        seed=args.seed, device=args.device))
    model.eval()
    if args.no_eval:
        model.save_pretrained(out / "final")
        print(f"trained {args.steps} steps; model in {out / 'final'} (no evaluation: --no-eval)")
        return
    model.to("cpu")
    result = cached_evaluation(model, out / "eval.json", args)
    checkpoint = latest_checkpoint(out / "sft")
    card = {
        "preset": args.preset, "init": args.init, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "train_samples": len(train), "demo_episodes": dataset.num_episodes, "ind_tasks": len(TASKS_IND),
        "checkpoint": str(checkpoint), "sft_log": str(out / "sft" / "metrics.jsonl"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {args.device}",
        "ind_success_rate": result["ind_success_rate"], "ood_success_rate": result["ood_success_rate"],
        "eval_episodes_per_task": args.eval_episodes, "mean_episode_length": result["mean_episode_length"],
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    (out / "eval_by_task.md").write_text(eval_table(result))
    print(json.dumps(card, indent=2))
    if not args.no_ship:
        shutil.rmtree(PACKAGE_PRESET_DIR, ignore_errors=True)
        model.to(torch.float16).save_pretrained(PACKAGE_PRESET_DIR)
        shutil.copy(out / "eval.json", PACKAGE_PRESET_DIR / "eval.json")
        shutil.copy(out / "model_card.json", PACKAGE_PRESET_DIR / "model_card.json")
        shutil.copy(out / "eval_by_task.md", PACKAGE_PRESET_DIR / "eval_by_task.md")
        print(f"shipped to {PACKAGE_PRESET_DIR}")


if __name__ == "__main__":
    main()
