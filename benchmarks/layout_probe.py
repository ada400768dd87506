"""Does a policy find the target on layouts it has never seen? Its first action against the expert's.

A quick check of a `train_base.py` checkpoint, long before a closed-loop evaluation can say anything:
on reset states of the IND tasks, the expert's first action moves the gripper towards the target cube,
so the sign of its x and y parts says on which side the target lies. This script records `--per-task`
reset states per IND task on a seed no training stage uses (`PROBE_SEED`), and reports, for held-out
layouts and for as many of the run's own training layouts, the correlation of predicted and expert
x / y / z and how often the x and y signs agree (50% is chance).

    python benchmarks/layout_probe.py /work/runs/base3/train_0/step_00001500 --run-dir /work/runs/base3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import torch
from train_base import PROBE_SEED, record_layouts

from vla_compress.envs.tasks import CAMERAS, DEFAULT_CAMERA, TASKS_IND
from vla_compress.loading import load_vla


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a model directory (a train_base.py checkpoint)")
    parser.add_argument("--run-dir", type=Path, required=True, help="the train_base.py run (its layouts/)")
    parser.add_argument("--per-task", type=int, default=25, help="held-out reset states per IND task")
    parser.add_argument("--camera", default=DEFAULT_CAMERA, choices=sorted(CAMERAS),
                        help="the view the checkpoint was trained on (train_base.py's --camera)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tasks-limit", type=int, default=None, help="only the first N IND tasks (tests)")
    args = parser.parse_args(argv)
    if args.per_task < 2:
        parser.error(f"--per-task must be >= 2, got {args.per_task}")
    if not (args.run_dir / "layouts").is_dir():
        parser.error(f"--run-dir {args.run_dir} has no layouts/ (run train_base.py with --layouts-per-task > 0)")
    return args


def first_frames(directory: Path, per_task: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(first frames, instructions, expert first actions) of `per_task` episodes of each task file."""
    images, texts, actions = [], [], []
    for path in sorted(directory.glob("*.hdf5")):
        with h5py.File(path, "r") as f:
            for name in list(f)[:per_task]:
                images.append(f[name]["rgb"][0])
                actions.append(f[name]["actions"][0])
                texts.append(f[name].attrs["instruction"])
    return np.stack(images), texts, np.stack(actions)


def agreement(model, images: np.ndarray, texts: list[str], expert: np.ndarray) -> dict[str, float]:
    with torch.no_grad():
        predicted = np.concatenate([model.predict_action(images[i:i + 64], texts[i:i + 64])
                                    for i in range(0, len(images), 64)])

    def corr(d: int) -> float:
        return float(np.corrcoef(predicted[:, d], expert[:, d])[0, 1]) if predicted[:, d].std() > 0 else 0.0

    return {"frames": len(images), **{f"corr_{a}": corr(d) for d, a in enumerate("xyz")},
            **{f"sign_{a}": float(np.mean(np.sign(predicted[:, d]) == np.sign(expert[:, d])))
               for d, a in enumerate("xy")}}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks = list(TASKS_IND[: args.tasks_limit]) if args.tasks_limit else list(TASKS_IND)
    held_out = record_layouts(args.run_dir / f"probe_{args.per_task}_{len(tasks)}", tasks, args.per_task, 1,
                              args.camera, None, seed=PROBE_SEED)
    model = load_vla(args.checkpoint).float().eval()
    result = {"checkpoint": str(args.checkpoint), "tasks": len(tasks), "probe_seed": PROBE_SEED,
              "training_layouts": agreement(model, *first_frames(args.run_dir / "layouts", args.per_task)),
              "held_out_layouts": agreement(model, *first_frames(held_out, args.per_task))}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
