r"""PPO on a few tasks from a recovered model: greedy success before and after, on the same seeded episodes.

The experiments behind docs/recovery_ppo.md: from table3.py's pruned + SFT model, PPO on a few IND tasks,
then the same greedy evaluation (same tasks, same seeded episodes) again.

    python benchmarks/ppo_tasks.py --model OUT/models/sft --output-dir runs/ppo          # 4 tasks, 2 envs
    python benchmarks/ppo_tasks.py --model OUT/models/sft --output-dir runs/ppo_e \
        --tasks blue_cube_on_purple_plate purple_cube_on_green_plate --episodes 32 --eval-seed 500 \
        --num-envs 8 --minibatch-size 120 --critic-warmup 3 --critic-off-backbone \
        --env-steps 28800 --temperature 0.3 --lr 2e-5                                  # run E
    ... the same --shuffle-advantages --output-dir runs/ppo_f                           # its no-signal control
    ... the same --reward-mode sparse --advantage group --group-size 4 --first-grasp-bonus 0.5 \
        --update-epochs 2 --target-kl 0.02 --critic-warmup 0 --output-dir runs/ppo_l    # run L
    python benchmarks/ppo_tasks.py --model tiny-maniskill --env-steps 120 --episodes 1   # quick look

Writes `before.json` (cached, so an interrupted run resumes without evaluating again), `result.json`
(settings, before, after, change), `ppo_rollouts.png`, `ppo_curve.png` (greedy success against env steps) and
the PPO run (checkpoints every update, metrics.jsonl)
in --output-dir.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from common import parse_checked, pyplot, save_figure
from report import write_json

from vla_compress import PPOConfig, load_vla, recover
from vla_compress.envs import REWARD_MODES, SIM_BACKENDS, resolve_tasks
from vla_compress.evaluation import evaluate, success_summary, two_proportion_test
from vla_compress.recovery.advantages import ADVANTAGE_ESTIMATORS
from vla_compress.recovery.env_runner import default_env_factory
from vla_compress.recovery.metrics import read_metrics
from vla_compress.recovery.ppo_config import ADVANTAGES
from vla_compress.recovery.rollout import info_flag

TASKS = ["red_cube_on_red_plate", "purple_cube_on_blue_plate", "blue_cube_on_purple_plate",
         "purple_cube_on_green_plate"]
EPISODE_STEPS = 60


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="policy to improve: a preset or a saved directory")
    parser.add_argument("--tasks", nargs="+", default=TASKS, help="PPO's tasks: ids, or one of ind, ood, all")
    parser.add_argument("--eval-tasks", nargs="+", default=None,
                        help="greedy evaluation's tasks before and after (default: --tasks), e.g. all")
    parser.add_argument("--curve-every", type=int, default=0,
                        help="every N updates a greedy evaluation of --curve-episodes per eval task, at "
                             "--eval-seed + 1, logged as eval/... (the success-vs-env-steps curve); 0 = none")
    parser.add_argument("--curve-episodes", type=int, default=1, help="episodes per task of each curve point")
    parser.add_argument("--env-steps", type=int, default=2400, help="PPO env steps, all envs together")
    parser.add_argument("--temperature", type=float, default=0.5, help="rollout sampling temperature")
    parser.add_argument("--episodes", type=int, default=6, help="greedy evaluation episodes per task")
    parser.add_argument("--eval-seed", type=int, default=100)
    parser.add_argument("--eval-envs", type=int, default=2, help="simulator workers of the greedy evaluations "
                        "(the episodes and their seeds do not depend on it)")
    parser.add_argument("--critic-off-backbone", action="store_true", help="PPOConfig(critic_trains_backbone=False)")
    parser.add_argument("--num-envs", type=int, default=2, help="parallel envs (PPOConfig.num_envs)")
    parser.add_argument("--rollout-episodes", type=int, default=1, help="episodes per env in one update's rollout")
    parser.add_argument("--minibatch-size", type=int, default=60, help="transitions per optimizer step")
    parser.add_argument("--lr", type=float, default=1e-4, help="policy learning rate (PPOConfig.learning_rate)")
    parser.add_argument("--critic-warmup", type=int, default=0, help="PPOConfig.critic_warmup_updates")
    parser.add_argument("--update-epochs", type=int, default=1, help="passes over each rollout (PPOConfig)")
    parser.add_argument("--target-kl", type=float, default=None, help="PPOConfig.target_kl (early stop)")
    parser.add_argument("--reward-mode", choices=REWARD_MODES, default="dense",
                        help="PPOConfig.reward_mode: dense = 1.0 placed + 0.1 grasped (RLRC), sparse = 1.0 placed")
    parser.add_argument("--advantage", choices=ADVANTAGES, default="gae",
                        help="PPOConfig.advantage: gae = the critic's GAE, group = return minus the mean return of "
                             "--group-size tries of the same start state")
    parser.add_argument("--group-size", type=int, default=4, help="PPOConfig.group_size (envs per start state)")
    parser.add_argument("--sim-backend", choices=SIM_BACKENDS, default="physx_cpu",
                        help="PPOConfig.sim_backend for the PPO envs (physx_cuda: ManiSkill's GPU batching); "
                             "the greedy evaluations run on CPU workers")
    parser.add_argument("--first-grasp-bonus", type=float, default=0.0,
                        help="add this reward once per episode, at the first step the target cube is grasped "
                             "(experiment; 0 = off)")
    parser.add_argument("--shuffle-advantages", action="store_true",
                        help="control: permute each rollout's advantages (same data and step sizes, no signal)")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/ppo_tasks"))
    args = parse_checked(parser, argv, ("env_steps", "episodes", "curve_episodes", "num_envs", "eval_envs",
                                        "rollout_episodes", "minibatch_size", "update_epochs", "group_size"))
    if args.target_kl is not None and args.target_kl <= 0:
        parser.error(f"--target-kl must be > 0, got {args.target_kl}")
    for name in ("temperature", "lr"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0, got {getattr(args, name)}")
    if args.first_grasp_bonus < 0:
        parser.error(f"--first-grasp-bonus must be >= 0, got {args.first_grasp_bonus}")
    for name in ("critic_warmup", "curve_every"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    try:  # one value may name a split ("ind"), which resolve_tasks expands only as a string
        args.tasks = resolve_tasks(args.tasks[0] if len(args.tasks) == 1 else args.tasks)
        args.eval_tasks = args.tasks if args.eval_tasks is None else resolve_tasks(
            args.eval_tasks[0] if len(args.eval_tasks) == 1 else args.eval_tasks)
    except ValueError as error:
        parser.error(f"--tasks / --eval-tasks: {error}")
    return args


class FirstGraspBonus(gym.vector.VectorWrapper):
    """Adds `bonus` to the reward at the first step of an episode where the target cube is grasped.

    An experiment of this script, not a library reward: a subgoal reward that, unlike RLRC's 0.1 per grasped
    step, pays nothing for holding on (most of the SFT policy's failures never grasp the cube at all).
    """

    def __init__(self, env: gym.vector.VectorEnv, bonus: float) -> None:
        super().__init__(env)
        self.bonus = bonus
        self.grasped = np.zeros(env.num_envs, dtype=bool)

    def reset(self, **kwargs):
        self.grasped[:] = False  # PPO resets every env at the start of each episode
        return self.env.reset(**kwargs)

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        grasped = info_flag(info, "is_grasped", self.num_envs)
        bonus = self.bonus * (grasped & ~self.grasped)
        self.grasped |= grasped
        if isinstance(reward, torch.Tensor):
            bonus = torch.as_tensor(bonus, dtype=reward.dtype, device=reward.device)
        return obs, reward + bonus, terminated, truncated, info


def with_first_grasp_bonus(factory, bonus: float):
    """PPOConfig.env_factory: `factory`'s env (the library's default one) with FirstGraspBonus on top."""
    return lambda seed: FirstGraspBonus(factory(seed), bonus)


def greedy_success(model, args: argparse.Namespace) -> dict:
    """Greedy success on --eval-tasks: per split with Wilson intervals (`success_summary`), and per task."""
    start = time.time()
    result = evaluate(model, tasks=args.eval_tasks, episodes_per_task=args.episodes, num_envs=args.eval_envs,
                      seed=args.eval_seed, max_episode_steps=EPISODE_STEPS, progress=False)
    return {"success_rate": result.ind_success_rate, "ood_success_rate": result.ood_success_rate,
            "splits": success_summary(result.episodes), "mean_return": result.mean_return,
            "per_task": result.success_rate, "seconds": time.time() - start}


def compare(before: dict, after: dict) -> dict:
    """Per split: the change in points and the two-proportion test of after against before."""
    out = {}
    for split, a in before["splits"].items():
        b = after["splits"][split]
        if a["episodes"] and b["episodes"]:
            z, p = two_proportion_test(a["successes"], a["episodes"], b["successes"], b["episodes"])
            out[split] = {"points": 100 * (b["rate"] - a["rate"]), "z": z, "p": p}
    return out


def curve_eval(args: argparse.Namespace):
    """PPOConfig.eval_fn of the success curve: greedy, --curve-episodes per eval task, at --eval-seed + 1 (so the
    final evaluation's episodes are never looked at during training)."""
    return partial(evaluate, tasks=args.eval_tasks, episodes_per_task=args.curve_episodes, num_envs=args.eval_envs,
                   seed=args.eval_seed + 1, max_episode_steps=EPISODE_STEPS, progress=False)


def shuffled_advantages(estimator: str, seed: int = 0):
    """A PPOConfig.advantage estimator: `estimator`'s advantages randomly permuted across each rollout, a
    control run with the same data, advantage distribution and step sizes, but no link between an action
    and its outcome."""
    generator = torch.Generator().manual_seed(seed)

    def shuffled(buffer, stats, config):
        advantages, returns, spread = ADVANTAGE_ESTIMATORS[estimator](buffer, stats, config)
        order = torch.randperm(advantages.numel(), generator=generator)
        return advantages.flatten()[order].view_as(advantages), returns, spread

    return shuffled


def plot_rollouts(run_dir: Path, path: Path, window: int = 10) -> None:
    """Rollout (sampled) success and return per update, raw and as a moving average over `window` updates."""
    rows = read_metrics(run_dir)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in zip(axes, ("charts/success_once", "charts/episodic_return"), ("success", "return"),
                              strict=True):
        steps = np.array([r["step"] for r in rows])
        values = np.array([r[key] for r in rows])
        ax.plot(steps, values, alpha=0.35, label="per update")
        if len(values) >= window:
            ax.plot(steps[window - 1:], np.convolve(values, np.ones(window) / window, "valid"),
                    label=f"mean of {window} updates")
        ax.set_xlabel("env steps")
        ax.set_ylabel(f"rollout {label}")
        ax.legend()
    fig.suptitle("PPO rollouts (sampled at the rollout temperature)")
    save_figure(fig, path)


def plot_greedy_curve(run_dir: Path, before: dict, after: dict, env_steps: int, path: Path) -> None:
    """Fig. 8's right half: greedy IND / OOD success against PPO env steps. Lines: the curve points logged
    during the run (--curve-episodes at --eval-seed + 1); markers: the before / after evaluations
    (--episodes at --eval-seed) at 0 and at the last env step, with their 95% Wilson intervals."""
    rows = read_metrics(run_dir)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for split, color in (("ind", "tab:blue"), ("ood", "tab:orange")):
        points = [(r["step"], r[f"eval/{split}_success_rate"]) for r in rows if f"eval/{split}_success_rate" in r]
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", color=color, label=f"{split.upper()} (curve)")
        ends = [(0, before["splits"].get(split)), (env_steps, after["splits"].get(split))]
        ends = [(x, s) for x, s in ends if s and s["episodes"]]
        if ends:
            rates = np.array([s["rate"] for _, s in ends])
            low, high = (np.array([s["wilson95"][i] for _, s in ends]) for i in (0, 1))
            ax.errorbar([x for x, _ in ends], rates, yerr=[rates - low, high - rates], fmt="s", color=color,
                        capsize=3, label=f"{split.upper()} before / after")
    ax.set_xlabel("PPO env steps")
    ax.set_ylabel("greedy success")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("Greedy success during PPO (cf. paper Fig. 8)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    model = load_vla(args.model)
    before_file = args.output_dir / "before.json"  # cached: a resumed run does not evaluate again
    evaluated = {"model": args.model, "tasks": args.eval_tasks, "episodes": args.episodes, "eval_seed": args.eval_seed}
    cached = json.loads(before_file.read_text()) if before_file.exists() else {}
    reusable = cached.get("evaluated") == evaluated and "splits" in cached  # older files lack the splits
    before = cached if reusable else {**greedy_success(model, args), "evaluated": evaluated}
    write_json(before_file, before)
    print("before", json.dumps(before), flush=True)
    start = time.time()
    config = PPOConfig(
        tasks=args.tasks, num_envs=args.num_envs, episode_steps=EPISODE_STEPS,
        rollout_steps=EPISODE_STEPS * args.rollout_episodes, total_env_steps=args.env_steps,
        minibatch_size=args.minibatch_size, learning_rate=args.lr, critic_warmup_updates=args.critic_warmup,
        update_epochs=args.update_epochs, temperature=args.temperature, output_dir=args.output_dir / "ppo",
        checkpoint_every=1, resume=True, progress=False, num_threads=1, seed=0,
        critic_trains_backbone=not args.critic_off_backbone, reward_mode=args.reward_mode,
        target_kl=args.target_kl, group_size=args.group_size,
        advantage=shuffled_advantages(args.advantage) if args.shuffle_advantages else args.advantage,
        sim_backend=args.sim_backend, eval_every=args.curve_every,
        eval_fn=curve_eval(args) if args.curve_every else None)
    if args.first_grasp_bonus:
        config.env_factory = with_first_grasp_bonus(default_env_factory(config, int(model.config.image_sizes[0])),
                                                    args.first_grasp_bonus)
    model = recover(model, rl=config)
    ppo_seconds = time.time() - start
    after = greedy_success(model, args)
    print("after", json.dumps(after), flush=True)
    result = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "ppo_seconds": ppo_seconds, "before": before, "after": after, "change": compare(before, after)}
    print("change", json.dumps(result["change"]), flush=True)
    write_json(args.output_dir / "result.json", result)
    plot_rollouts(args.output_dir / "ppo", args.output_dir / "ppo_rollouts.png")
    plot_greedy_curve(args.output_dir / "ppo", before, after, args.env_steps, args.output_dir / "ppo_curve.png")
    return result


if __name__ == "__main__":
    main()
