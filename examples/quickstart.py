"""Load the embedded default policy, predict actions for rendered simulator frames, prune it, compare.

    python examples/quickstart.py [--preset tiny-maniskill] [--synthetic]
"""

from __future__ import annotations

import argparse

import numpy as np

from vla_compress import component_sizes, load_vla
from vla_compress.pruning import prune


def rendered_frames(n: int, image_size: int = 128) -> tuple[np.ndarray, list[str]]:
    """First frames of `n` IND tasks from the ManiSkill suite."""
    from vla_compress.envs import TASKS_IND, env_info, make_env

    envs = make_env(tasks=list(TASKS_IND[:n]), num_envs=1, image_size=image_size)
    images, instructions = [], []
    try:
        for task in TASKS_IND[:n]:
            obs, info = envs.reset(seed=0, options={"tasks": [task]})
            images.append(np.asarray(obs["image"])[0])
            instructions += env_info(envs, info, "instruction")
    finally:
        envs.close()
    return np.stack(images), instructions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default=None, help="default: tiny-maniskill if shipped, else tiny")
    parser.add_argument("--synthetic", action="store_true", help="random images instead of simulator frames")
    args = parser.parse_args()
    try:
        model = load_vla(args.preset or "tiny-maniskill")
    except ValueError:
        if args.preset:
            raise
        model = load_vla("tiny")
    if args.synthetic:
        images = np.random.default_rng(0).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
        instructions = ["put the red cube on the blue plate"] * 3
    else:
        images, instructions = rendered_frames(3)
    actions = model.predict_action(images, instructions)
    for instruction, action in zip(instructions, actions):
        print(f"{instruction!r:45} -> {np.array2string(action, precision=3)}")
    dense = component_sizes(model)["total"]
    model = prune(model, ratio=0.5, importance="l2")
    pruned = component_sizes(model)["total"]
    print(f"pruned 50% of the LM's heads/channels: {dense.params / 1e6:.2f} M -> {pruned.params / 1e6:.2f} M params")
    print("pruned actions:", np.array2string(model.predict_action(images, instructions)[0], precision=3))


if __name__ == "__main__":
    main()
