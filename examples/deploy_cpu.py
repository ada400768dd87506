"""Drive the simulator with a compressed checkpoint on a CPU: one episode, printing success and latency.

python examples/deploy_cpu.py openvla-rlrc-4bit --task red_cube_on_blue_plate
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from vla_compress import load_vla
from vla_compress.envs import env_info, make_env


def run_episode(
    checkpoint: Path, task: str, max_episode_steps: int, image_size: int, seed: int, unnorm_key: str | None
) -> tuple[bool, int, float]:
    """(success, steps until success or the time limit, median ms per action)."""
    model = load_vla(checkpoint, device="cpu")
    envs = make_env(tasks=[task], num_envs=1, image_size=image_size, max_episode_steps=max_episode_steps)
    latencies = []
    try:
        obs, info = envs.reset(seed=seed, options={"tasks": [task]})
        print(f"task: {env_info(envs, info, 'instruction')[0]!r}")
        for step in range(1, max_episode_steps + 1):
            start = time.perf_counter()
            action = model.predict_action(
                np.asarray(obs["image"]), env_info(envs, info, "instruction"), unnorm_key=unnorm_key
            )
            latencies.append(1e3 * (time.perf_counter() - start))
            obs, _, _, _, info = envs.step(np.clip(action, -1.0, 1.0))
            if bool(np.asarray(info["success"]).reshape(-1)[0]):
                return True, step, float(np.median(latencies))
    finally:
        envs.close()
    return False, max_episode_steps, float(np.median(latencies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a save_pretrained directory (pruned / quantized)")
    parser.add_argument("--task", default="red_cube_on_blue_plate")
    parser.add_argument("--max-episode-steps", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unnorm-key", default=None, help="norm_stats entry; default the model's only one")
    args = parser.parse_args()
    success, steps, latency = run_episode(
        args.checkpoint, args.task, args.max_episode_steps, args.image_size, args.seed, args.unnorm_key
    )
    print(f"success: {success} after {steps} steps; median {latency:.1f} ms per action on the CPU")


if __name__ == "__main__":
    main()
