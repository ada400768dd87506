"""Scripted demonstrations for the ManiSkill suite: generation, HDF5 storage, norm stats and a reader.

Dataset layout (a directory):

    <out_dir>/<task>.hdf5            one file per task, written to a temp file and renamed when done
        attrs: task, instruction, image_size, attempts, successes, seconds
        episode_00000/               one group per successful episode
            rgb      [T,H,W,3] uint8    camera image before each action (lzf-compressed)
            actions  [T,7]     float32  expert action: xyz delta, rotation delta, gripper (-1 closed, +1 open)
            proprio  [T,9]     float32  TCP pose (xyz, wxyz) and the two finger joint positions
            state    [T,25]    float32  privileged state (STATE_FIELDS): TCP, target cube and plate
                                        positions, finger opening, target cube grasped, image keypoints
                                        (u, v in [0, 1]) of both cubes, both plates and the TCP, colour
                                        indices of both cubes and plates (for training-only auxiliary
                                        losses; files written before 2026-12-01 have the first 11 or none)
            attrs: task, instruction, success (bool), seed
    <out_dir>/norm_stats.json        OpenVLA form: {dataset_name: {"action": {mean,std,max,min,q01,q99,mask},
                                     "proprio": {...}, "num_transitions", "num_trajectories"}}

Generation is resumable: finished task files are kept and skipped on a rerun.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm.auto import tqdm

from vla_compress.data.hdf5_files import ProcessLocalFiles
from vla_compress.envs.tasks import ALL_TASKS, DEFAULT_CAMERA, instruction, resolve_tasks

DATASET_NAME = "maniskill_put_cube_on_plate"
ACTION_MASK = [True] * 6 + [False]
# Privileged simulator state recorded beside each frame: (info key, width) in column order.
STATE_FIELDS = (("tcp_pos", 3), ("cube_pos", 3), ("plate_pos", 3), ("gripper_width", 1), ("is_grasped", 1),
                ("keypoints", 10), ("object_colours", 4))
STATE_DIM = sum(width for _, width in STATE_FIELDS)


def privileged_state(info: dict, num_envs: int) -> np.ndarray:
    """float32 [num_envs, STATE_DIM] from a suite env's ``info`` (columns as ``STATE_FIELDS``)."""
    columns = []
    for key, width in STATE_FIELDS:
        columns.append(np.asarray(to_numpy(info[key]), dtype=np.float32).reshape(num_envs, width))
    return np.concatenate(columns, axis=1)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to a temporary sibling, then rename it onto ``path``."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


ActionChooser = Callable[[dict, dict, np.ndarray], np.ndarray]  # (obs, info, expert action) -> executed


def record_episodes(envs, expert, seeds: list[int], task: str, choose: ActionChooser,
                    max_steps: int, on_reset: Callable[[], Any] | None = None) -> list[dict[str, Any]]:
    """Run one batch of episodes, executing ``choose(obs, info, expert_action)`` and recording the expert's
    action as the label at every visited state, up to the first success (or ``max_steps``).
    ``on_reset`` is called once the envs have reset, before the first step (a stateful learner's reset).

    Per env: ``rgb``, ``proprio``, ``actions`` (expert labels), ``state`` (privileged) and ``success``.
    """
    n = envs.num_envs
    obs, info = envs.reset(seed=seeds, options={"tasks": [task] * n})
    if on_reset is not None:
        on_reset()
    steps: list[list[tuple]] = [[] for _ in range(n)]
    done = np.zeros(n, dtype=bool)
    for _ in range(max_steps):
        action = expert.act(info)
        state = privileged_state(info, n)
        executed = np.asarray(choose(obs, info, action), dtype=np.float32)
        images, proprio = np.asarray(to_numpy(obs["image"])), np.asarray(to_numpy(obs["proprio"]))
        for i in np.flatnonzero(~done):
            steps[i].append((images[i], proprio[i], action[i], state[i]))
        obs, _, _, _, info = envs.step(np.clip(executed, -1.0, 1.0))
        done |= np.asarray(to_numpy(info["success"]), dtype=bool).reshape(n)
        if done.all():
            break
    return [
        {"rgb": np.stack([s[0] for s in ep]), "proprio": np.stack([s[1] for s in ep]).astype(np.float32),
         "actions": np.stack([s[2] for s in ep]).astype(np.float32), "state": np.stack([s[3] for s in ep]),
         "success": bool(ok)}
        for ep, ok in zip(steps, done)
    ]


def write_episode(f: h5py.File, index: int, episode: dict[str, Any], task: str, seed: int) -> None:
    """One episode group ``episode_{index:05d}`` in the layout of the module docstring."""
    group = f.create_group(f"episode_{index:05d}")
    group.create_dataset("rgb", data=episode["rgb"], compression="lzf", chunks=(1, *episode["rgb"].shape[1:]))
    for key in ("actions", "proprio", "state"):
        group.create_dataset(key, data=episode[key])
    group.attrs.update(task=task, instruction=instruction(task), success=episode["success"], seed=seed)


def record_task_file(path: Path, envs, expert, task: str, seed: int, choose: ActionChooser, episodes: int,
                     max_steps: int, max_attempts: int | None = None, keep_failures: bool = False, bar=None,
                     on_reset: Callable[[], Any] | None = None, **attrs: Any) -> dict[str, Any]:
    """One task file of ``episodes`` recorded episodes (successful ones only unless ``keep_failures``).

    Episode seeds are ``seed * 1_000_000 + task index * 10_000 + attempt``. The file is written to a
    ``.tmp`` sibling and renamed when complete; an existing ``path`` is read back instead (resume).
    Returns attempts, successes and seconds, also stored as file attributes beside ``attrs``.
    """
    if path.exists():
        with h5py.File(path, "r") as f:
            stats = {k: f.attrs[k].item() for k in ("attempts", "successes", "seconds")}
        if bar is not None:
            bar.update(episodes)
        return stats
    start, attempts, successes, kept = time.perf_counter(), 0, 0, 0
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        while kept < episodes and (max_attempts is None or attempts < max_attempts):
            seeds = [seed * 1_000_000 + ALL_TASKS.index(task) * 10_000 + attempts + i for i in range(envs.num_envs)]
            for episode_seed, ep in zip(seeds, record_episodes(envs, expert, seeds, task, choose, max_steps, on_reset)):
                if kept >= episodes:
                    break
                attempts += 1
                successes += ep["success"]
                if ep["success"] or keep_failures:
                    write_episode(f, kept, ep, task, episode_seed)
                    kept += 1
                    if bar is not None:
                        bar.update(1)
        stats = {"attempts": attempts, "successes": successes, "seconds": time.perf_counter() - start}
        f.attrs.update(task=task, instruction=instruction(task), **stats, **attrs)
    os.replace(tmp, path)
    return stats


def to_numpy(value: Any) -> Any:
    """A torch tensor (any device) as numpy; anything else unchanged."""
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


def generate_demos(
    out_dir: str | Path,
    tasks: str | list[str] = "ind",
    episodes_per_task: int = 40,
    image_size: int = 128,
    seed: int = 0,
    num_workers: int = 1,
    max_episode_steps: int | None = None,
    noise_std: float = 0.05,
    max_attempts_per_task: int | None = None,
    dataset_name: str = DATASET_NAME,
    progress: bool = True,
    camera: str = DEFAULT_CAMERA,
) -> dict[str, Any]:
    """Write ``episodes_per_task`` successful expert episodes per task to ``out_dir`` (layout: module doc).

    Failed episodes are dropped. ``noise_std`` adds Gaussian noise to the executed xyz action while the
    clean expert action is recorded (DART-style), so the data contains recovery states. ``camera`` is
    :func:`~vla_compress.envs.make_env`'s. Returns a summary
    with attempts, successes, expert success rate and seconds per task, also written to ``summary.json``.
    """
    from vla_compress.data.expert import ScriptedExpert
    from vla_compress.envs import make_env
    from vla_compress.envs.maniskill_suite import DEFAULT_EPISODE_STEPS

    tasks = resolve_tasks(tasks)
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    max_attempts = max_attempts_per_task or 2 * episodes_per_task + 4
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    envs = make_env(tasks=tasks, num_envs=num_workers, image_size=image_size,
                    max_episode_steps=max_episode_steps, camera=camera)
    max_steps = max_episode_steps or DEFAULT_EPISODE_STEPS
    expert = ScriptedExpert(num_workers)
    summary: dict[str, Any] = {}
    bar = tqdm(total=len(tasks) * episodes_per_task, desc="demos", disable=not progress)
    try:
        for task in tasks:
            rng = np.random.default_rng([seed, ALL_TASKS.index(task)])

            def noisy(obs, info, action, rng=rng):
                executed = action.copy()
                executed[:, :3] += rng.normal(0.0, noise_std, size=(len(action), 3)).astype(np.float32)
                return executed

            summary[task] = record_task_file(out / f"{task}.hdf5", envs, expert, task, seed, noisy, episodes_per_task,
                                             max_steps, max_attempts=max_attempts, bar=bar, image_size=image_size,
                                             camera=camera)
            bar.set_postfix(expert_success=f"{summary[task]['successes'] / summary[task]['attempts']:.2f}")
    finally:
        bar.close()
        envs.close()
    attempts = sum(s["attempts"] for s in summary.values())
    result = {
        "tasks": summary,
        "expert_success_rate": sum(s["successes"] for s in summary.values()) / max(attempts, 1),
        "seconds": sum(s["seconds"] for s in summary.values()),
        "megabytes": sum(p.stat().st_size for p in out.glob("*.hdf5")) / 2**20,
    }
    atomic_write_json(out / "summary.json", result)
    atomic_write_json(out / "norm_stats.json", compute_norm_stats(out, dataset_name))
    return result


def _stats(x: np.ndarray, mask: list[bool] | None = None) -> dict[str, list]:
    stats = {
        "mean": x.mean(0), "std": x.std(0), "max": x.max(0), "min": x.min(0),
        "q01": np.quantile(x, 0.01, axis=0), "q99": np.quantile(x, 0.99, axis=0),
    }
    out = {k: v.astype(np.float64).tolist() for k, v in stats.items()}
    if mask is not None:
        out["mask"] = list(mask)
    return out


def _task_files(path: Path) -> list[Path]:
    if not path.exists():
        raise ValueError(f"dataset path {str(path)!r} does not exist")
    files = sorted(path.glob("*.hdf5")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"dataset path {str(path)!r} holds no .hdf5 files")
    return files


def _files_of(paths: list[Path]) -> list[Path]:
    return [file for path in paths for file in _task_files(path)]


def _as_paths(path: str | Path | Sequence[str | Path]) -> list[Path]:
    paths = [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]
    if not paths:
        raise ValueError("dataset path: give at least one directory or file")
    return paths


def compute_norm_stats(path: str | Path | Sequence[str | Path], dataset_name: str = DATASET_NAME) -> dict[str, Any]:
    """OpenVLA-style norm stats over every episode in one or more dataset directories or files."""
    actions, proprio = [], []
    for file in _files_of(_as_paths(path)):
        with h5py.File(file, "r") as f:
            for group in f.values():
                actions.append(group["actions"][()])
                proprio.append(group["proprio"][()])
    if not actions:
        raise ValueError(f"dataset {str(path)!r} has no episodes")
    return {dataset_name: {
        "action": _stats(np.concatenate(actions), ACTION_MASK),
        "proprio": _stats(np.concatenate(proprio)),
        "num_transitions": int(sum(len(a) for a in actions)),
        "num_trajectories": len(actions),
    }}


class DemoDataset:
    """Map-style dataset over every step of every episode in a demo directory (or one task file), or in
    several of them in order (for example the demos and the DAgger rounds of a base policy's recipe).

    Items are ``{"image": uint8 [H,W,3], "instruction": str, "action": float32 [7], "task": str,
    "episode": str}`` (the episode's group name within its task file), plus ``"state"`` float32
    [STATE_DIM] where the file records privileged state.
    Files are opened lazily per process, so it works with ``torch.utils.data.DataLoader`` workers.
    """

    def __init__(self, path: str | Path | Sequence[str | Path]):
        self.paths = _as_paths(path)
        self.path = self.paths[0]
        self._files = _files_of(self.paths)
        self._index: list[tuple[int, str, int]] = []
        self._meta: dict[tuple[int, str], tuple[str, str]] = {}
        for fi, file in enumerate(self._files):
            with h5py.File(file, "r") as f:
                for name, group in f.items():
                    self._meta[fi, name] = (str(group.attrs["task"]), str(group.attrs["instruction"]))
                    self._index += [(fi, name, t) for t in range(group["actions"].shape[0])]
        if not self._index:
            raise ValueError(f"dataset {', '.join(map(str, self.paths))!r} has no episodes")
        self._h5 = ProcessLocalFiles(self._files)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        fi, name, t = self._index[idx]
        group = self._h5[fi][name]
        task, text = self._meta[fi, name]
        action = group["actions"][t].astype(np.float32)
        item = {"image": group["rgb"][t], "instruction": text, "action": action, "task": task, "episode": name}
        if "state" in group:
            item["state"] = group["state"][t]
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))

    @property
    def num_episodes(self) -> int:
        return len(self._meta)

    @property
    def norm_stats(self) -> dict[str, Any]:
        """``norm_stats.json`` beside the first path's data when present (a policy trained on several
        directories tokenises every action with the demos' statistics), else computed from all episodes."""
        stats_file = (self.path if self.path.is_dir() else self.path.parent) / "norm_stats.json"
        if stats_file.exists():
            return json.loads(stats_file.read_text())
        return compute_norm_stats(self.paths)
