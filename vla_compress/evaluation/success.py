"""Success-rate evaluation of a policy on a simulation suite: ManiSkill (IND / OOD tasks) or LIBERO."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from vla_compress.envs.tasks import ALL_TASKS, DEFAULT_CAMERA, TASKS_IND, TASKS_OOD, resolve_tasks


class ActionPolicy(Protocol):
    def predict_action(self, images: np.ndarray, instructions: list[str], unnorm_key: str | None = None
                       ) -> np.ndarray: ...


PolicyLike = ActionPolicy | Callable[..., np.ndarray]


class RandomPolicy:
    """Uniform random actions in [-1, 1]^7, seeded; for tests and as a floor."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def predict_action(self, images: np.ndarray, instructions: list[str], unnorm_key: str | None = None
                       ) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=(len(images), 7)).astype(np.float32)


@dataclass
class EvalResult:
    """Per-task success rates and means; an episode succeeds if the task succeeded at any step.

    ``mean_episode_length`` counts steps until the first success (the full length for failures).
    """

    success_rate: dict[str, float]
    ind_success_rate: float | None
    ood_success_rate: float | None
    mean_success_rate: float
    mean_episode_length: float
    mean_return: float
    episodes_per_task: int
    seed: int
    episodes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wilson_interval(successes: int, episodes: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95% for the default ``z``); (0, 1) with no episodes."""
    if episodes < 0 or not 0 <= successes <= episodes:
        raise ValueError(f"successes must be in [0, episodes] and episodes >= 0, got {successes} of {episodes}")
    if episodes == 0:
        return 0.0, 1.0
    p = successes / episodes
    centre = (p + z * z / (2 * episodes)) / (1 + z * z / episodes)
    half = z * np.sqrt(p * (1 - p) / episodes + z * z / (4 * episodes**2)) / (1 + z * z / episodes)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def two_proportion_test(successes_a: int, episodes_a: int, successes_b: int, episodes_b: int
                        ) -> tuple[float, float]:
    """(z, two-sided p) of the pooled two-proportion z-test that rate b differs from rate a; z > 0 when b is
    higher. Written out (a normal tail by `math.erfc`) to keep scipy / statsmodels out of the dependencies."""
    for name, wins, total in (("a", successes_a, episodes_a), ("b", successes_b, episodes_b)):
        if total < 1 or not 0 <= wins <= total:
            raise ValueError(f"successes_{name} must be in [0, episodes_{name}] and episodes_{name} >= 1, "
                             f"got {wins} of {total}")
    pooled = (successes_a + successes_b) / (episodes_a + episodes_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / episodes_a + 1 / episodes_b))
    difference = successes_b / episodes_b - successes_a / episodes_a
    if spread == 0:  # both rates 0 or both 1
        return 0.0, 1.0
    z = difference / spread
    return z, math.erfc(abs(z) / math.sqrt(2))


def success_summary(episodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """IND / OOD ``successes``, ``episodes``, ``rate`` and 95% Wilson interval (``wilson95``) of an
    evaluation's episode records (``EvalResult.episodes``); tasks outside the OOD split count as IND, as
    ``evaluate`` counts a LIBERO suite's."""
    summary = {}
    for split, in_split in (("ind", lambda task: task not in TASKS_OOD), ("ood", lambda task: task in TASKS_OOD)):
        chosen = [e for e in episodes if in_split(e["task"])]
        wins = int(sum(bool(e["success"]) for e in chosen))
        summary[split] = {"successes": wins, "episodes": len(chosen), "rate": wins / len(chosen) if chosen else None,
                          "wilson95": list(wilson_interval(wins, len(chosen)))}
    return summary


def format_success(successes: int, episodes: int) -> str:
    """A success rate as ``"92.5 [89.1, 94.9] (296/320)"``: % with its 95% Wilson interval and the counts."""
    if not episodes:
        return "—"
    low, high = wilson_interval(successes, episodes)
    return f"{100 * successes / episodes:.1f} [{100 * low:.1f}, {100 * high:.1f}] ({successes}/{episodes})"


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any device) or array-like as a numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _episodes(suite: str, tasks: str | list[str], episodes_per_task: int, seed: int,
              max_episode_steps: int | None) -> tuple[list[str], list[str], list[str], int, list[tuple]]:
    """(tasks, IND tasks, OOD tasks, episode length, jobs of (task, episode, env seed)) for ``suite``."""
    from vla_compress.envs.libero import MAX_EPISODE_STEPS, resolve_libero_tasks
    from vla_compress.envs.vector import SUITES

    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    if suite == "maniskill":
        from vla_compress.envs.maniskill_suite import DEFAULT_EPISODE_STEPS

        names = resolve_tasks(tasks)
        steps = max_episode_steps or DEFAULT_EPISODE_STEPS
        jobs = [(task, k, seed * 1_000_003 + ALL_TASKS.index(task) * 1_000 + k)
                for task in names for k in range(episodes_per_task)]
        return names, list(TASKS_IND), list(TASKS_OOD), steps, jobs
    names = resolve_libero_tasks(suite, tasks)
    steps = max_episode_steps or MAX_EPISODE_STEPS[suite]
    # LIBERO's env seed picks the fixed init state (seed % 50): episode k starts from init state seed + k
    jobs = [(task, k, seed + k) for task in names for k in range(episodes_per_task)]
    return names, names, [], steps, jobs


def evaluate(
    policy: PolicyLike,
    suite: str = "maniskill",
    tasks: str | list[str] = "all",
    episodes_per_task: int = 10,
    num_envs: int = 1,
    seed: int = 0,
    image_size: int = 128,
    max_episode_steps: int | None = None,
    unnorm_key: str | None = None,
    progress: bool = True,
    output: str | Path | None = None,
    envs: Any | None = None,
    camera: str = DEFAULT_CAMERA,
    decode: str | None = None,
) -> EvalResult:
    """Roll ``policy`` out on every task ``episodes_per_task`` times across ``num_envs`` parallel workers.

    ``policy`` has ``predict_action(images uint8 [B,H,W,3], instructions list[str], unnorm_key) -> [B,7]``
    or is a callable with that signature; row b of every call is worker b's current episode. A stateful
    policy (one with ``reset()``, such as ``VLACachePolicy``) is reset whenever the workers start new
    episodes, before their first frames. Results are reproducible for a deterministic policy:

    - ``suite="maniskill"``: ``tasks`` is 'ind', 'ood', 'all' or task ids; episode ``k`` of a task always
      uses the same env seed; episodes last 60 steps unless ``max_episode_steps`` is given.
    - ``suite="libero_spatial"`` / ``"libero_10"`` (extra ``vla-compress[libero]``): ``tasks`` is 'all'
      (or 'ind'), LIBERO task names or indices 0..9; ``success_rate`` is keyed by LIBERO task name, every
      task counts as IND (``ood_success_rate`` is None); episode ``k`` of a task starts from LIBERO's
      fixed init state ``(seed + k) % 50`` (with ``seed=0``, OpenVLA's protocol: episode k on init state
      k); episodes last 220 (spatial) / 520 (libero_10) steps unless ``max_episode_steps`` is given;
      the gripper is in this package's convention (-1 closed / +1 open).

    Writes JSON to ``output`` when given. ``envs``: an open vector env to run in, from ``make_env`` with this
    suite, tasks, image size and ``max_episode_steps``; its worker count replaces ``num_envs`` and it is left
    open, so one env serves several evaluations (building one renders its first frame, seconds on a CPU).
    None: one is built and closed. ``camera``: the ManiSkill suite's view (``tasks.CAMERAS``; default
    "workspace+wrist", the shipped tiny-maniskill's), the one the policy was trained on. ``decode``: an
    OpenVLA model's ``predict_action`` decode path
    ("dynamic", "static", "compiled", "frozen"; None: its default, "dynamic"); "compiled" is the fastest for a
    small model on a CPU once compiled (the batch stays ``num_envs``, so it compiles once), "frozen" for a
    large one at batch 1 (weights frozen into the graph; see ``generate_action_indices``).
    """
    from vla_compress.envs import make_env

    tasks, tasks_ind, tasks_ood, steps, jobs = _episodes(suite, tasks, episodes_per_task, seed, max_episode_steps)
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    from vla_compress.modeling.modeling_openvla import action_predictor, episode_reset

    predict = action_predictor(policy, decode)
    reset_policy = episode_reset(policy)
    own_envs = envs is None
    if own_envs:
        num_envs = min(num_envs, len(jobs))
        envs = make_env(suite, tasks=tasks, num_envs=num_envs, image_size=image_size, max_episode_steps=steps,
                        camera=camera)
    else:
        num_envs = envs.num_envs
    episodes: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), desc="evaluate", disable=not progress)
    try:
        for start in range(0, len(jobs), num_envs):
            batch = jobs[start:start + num_envs]
            batch += [batch[-1]] * (num_envs - len(batch))  # pad the last round; padded results dropped
            obs, info = envs.reset(seed=[j[2] for j in batch], options={"tasks": [j[0] for j in batch]})
            if reset_policy is not None:
                reset_policy()
            init_states = info.get("init_state")  # LIBERO only
            success_step = np.full(num_envs, -1)
            returns = np.zeros(num_envs)
            for t in range(steps):
                images = np.asarray(_to_numpy(obs["image"]), dtype=np.uint8)
                instructions = [str(s) for s in np.asarray(info["instruction"]).reshape(num_envs)]
                action = np.asarray(_to_numpy(predict(images, instructions, unnorm_key=unnorm_key)),
                                    dtype=np.float32).reshape(num_envs, 7)
                obs, reward, _, _, info = envs.step(np.clip(action, -1.0, 1.0))
                returns += np.asarray(_to_numpy(reward), dtype=np.float64).reshape(num_envs)
                success = np.asarray(_to_numpy(info["success"]), dtype=bool).reshape(num_envs)
                success_step[(success_step < 0) & success] = t + 1
                if (success_step > 0).all():  # success counts at first occurrence: stop early
                    break
            for i, (task, k, episode_seed) in enumerate(jobs[start:start + num_envs]):
                episode = {"task": task, "episode": k, "seed": episode_seed,
                           "success": bool(success_step[i] > 0),
                           "length": int(success_step[i]) if success_step[i] > 0 else steps,
                           "return": float(returns[i])}
                if init_states is not None:
                    episode["init_state"] = int(np.asarray(init_states).reshape(num_envs)[i])
                episodes.append(episode)
                bar.update(1)
    finally:
        bar.close()
        if own_envs:
            envs.close()

    rate = {t: float(np.mean([e["success"] for e in episodes if e["task"] == t])) for t in tasks}
    result = EvalResult(
        success_rate=rate,
        ind_success_rate=_mean([r for t, r in rate.items() if t in tasks_ind]),
        ood_success_rate=_mean([r for t, r in rate.items() if t in tasks_ood]),
        mean_success_rate=float(np.mean(list(rate.values()))),
        mean_episode_length=float(np.mean([e["length"] for e in episodes])),
        mean_return=float(np.mean([e["return"] for e in episodes])),
        episodes_per_task=episodes_per_task,
        seed=seed,
        episodes=episodes,
    )
    if output is not None:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.to_dict(), indent=2))
    return result
