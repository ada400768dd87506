"""DAgger data: roll out a learner in the ManiSkill suite and label every state it visits with the expert.

The files have the layout of :mod:`vla_compress.data.demos` (one HDF5 file per task, read by
:class:`~vla_compress.data.DemoDataset`), but keep failed episodes too: the states a learner reaches
when it goes wrong are the point. Resumable: finished task files are kept and skipped on a rerun.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vla_compress.data.demos import atomic_write_json, record_task_file, to_numpy
from vla_compress.envs.tasks import ALL_TASKS, DEFAULT_CAMERA, instruction, resolve_tasks


def check_dagger_args(episodes_per_task: int, num_workers: int, expert_mix: float) -> None:
    """ValueError naming the first of :func:`collect_dagger`'s counts or mix that is out of range."""
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if not 0.0 <= expert_mix <= 1.0:
        raise ValueError(f"expert_mix must be in [0, 1], got {expert_mix}")


def collect_dagger(
    policy,
    out_dir: str | Path,
    tasks: str | list[str] = "ind",
    episodes_per_task: int = 10,
    seed: int = 0,
    num_workers: int = 2,
    expert_mix: float = 0.0,
    image_size: int = 128,
    max_episode_steps: int | None = None,
    progress: bool = True,
    camera: str = DEFAULT_CAMERA,
    decode: str | None = None,
) -> dict[str, Any]:
    """Roll out ``policy`` (``predict_action(images, instructions) -> [B, 7]``) ``episodes_per_task`` times
    per task and write the visited states with the expert's actions to ``out_dir``.

    ``expert_mix`` is DAgger's beta: the probability, per step and env, of executing the expert's action
    instead of the learner's. Episode seeds are ``seed * 1_000_000 + task index * 10_000 + k``: keep
    ``seed`` apart from the demonstrations' and the evaluation's; ``camera`` is ``make_env``'s; ``decode`` an
    OpenVLA policy's ``predict_action`` decode path, as in :func:`~vla_compress.evaluation.evaluate`. A stateful
    policy (one with ``reset()``, such as ``GripperHysteresis``) is reset whenever the workers start new
    episodes. Returns
    (and writes to ``summary.json``) the learner's success rate per task on these rollouts.
    """
    from vla_compress.data.expert import ScriptedExpert
    from vla_compress.envs import make_env
    from vla_compress.envs.maniskill_suite import DEFAULT_EPISODE_STEPS
    from vla_compress.modeling.modeling_openvla import action_predictor, episode_reset

    tasks = resolve_tasks(tasks)
    check_dagger_args(episodes_per_task, num_workers, expert_mix)
    predict = action_predictor(policy, decode)
    reset_policy = episode_reset(policy)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    max_steps = max_episode_steps or DEFAULT_EPISODE_STEPS
    envs = make_env(tasks=tasks, num_envs=num_workers, image_size=image_size, max_episode_steps=max_steps,
                    camera=camera)
    expert = ScriptedExpert(num_workers)
    summary: dict[str, Any] = {}
    bar = tqdm(total=len(tasks) * episodes_per_task, desc="dagger", disable=not progress)
    try:
        for task in tasks:
            rng = np.random.default_rng([seed, ALL_TASKS.index(task)])

            def learner(obs, info, expert_action, rng=rng, task=task):
                images = np.asarray(to_numpy(obs["image"]), dtype=np.uint8)
                action = np.asarray(predict(images, [instruction(task)] * len(images)),
                                    dtype=np.float32)
                use_expert = rng.random(len(action)) < expert_mix
                return np.where(use_expert[:, None], expert_action, action)

            stats = record_task_file(out / f"{task}.hdf5", envs, expert, task, seed, learner, episodes_per_task,
                                     max_steps, keep_failures=True, bar=bar, on_reset=reset_policy,
                                     image_size=image_size,
                                     expert_mix=expert_mix, camera=camera)
            summary[task] = {"episodes": stats["attempts"], "successes": stats["successes"],
                             "seconds": stats["seconds"]}
            bar.set_postfix(learner_success=f"{stats['successes'] / stats['attempts']:.2f}")
    finally:
        bar.close()
        envs.close()
    episodes = sum(s["episodes"] for s in summary.values())
    result = {"tasks": summary, "expert_mix": expert_mix,
              "learner_success_rate": sum(s["successes"] for s in summary.values()) / max(episodes, 1),
              "seconds": sum(s["seconds"] for s in summary.values())}
    atomic_write_json(out / "summary.json", result)
    return result
