"""``make_env``: vectorised suite environments yielding (image, proprio) observations and instructions."""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np

from vla_compress.envs.libero import LIBERO_SUITES, make_libero_env
from vla_compress.envs.tasks import (
    DEFAULT_CAMERA,
    WRIST_INSET_SHARE,
    WRIST_INSET_VIEWS,
    check_camera,
    instruction,
    resolve_tasks,
)

SUITES = ("maniskill", *LIBERO_SUITES)
SIM_BACKENDS = ("physx_cpu", "physx_cuda")
# "dense": RLRC's eq. 6 (1.0 while the cube rests on the plate, 0.1 while grasped); "sparse": the 1.0 term only.
REWARD_MODES = ("dense", "sparse")
CONTROL_MODE = "pd_ee_delta_pose"
VULKAN_HELP = (
    "SAPIEN found no usable Vulkan device, which ManiSkill needs to render camera images. "
    "Run `sudo scripts/install_system_deps.sh`, or install Mesa lavapipe >= 25 "
    "(`apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1`) on Debian bookworm."
)


def check_reward_mode(reward_mode: str) -> None:
    """Raise ValueError unless ``reward_mode`` is one of :data:`REWARD_MODES`."""
    if reward_mode not in REWARD_MODES:
        raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")


def check_env_settings(reward_mode: str, sim_backend: str) -> None:
    """Raise ValueError for a reward mode or simulator backend ``make_env`` does not offer."""
    check_reward_mode(reward_mode)
    if sim_backend not in SIM_BACKENDS:
        raise ValueError(f"sim_backend must be one of {SIM_BACKENDS}, got {sim_backend!r}")


def check_vulkan() -> None:
    """Raise RuntimeError with install instructions when SAPIEN sees no Vulkan device."""
    import sapien

    try:
        summary = sapien.render.get_device_summary()
    except RuntimeError as err:
        raise RuntimeError(VULKAN_HELP) from err
    if "Supported: 1" not in summary:
        raise RuntimeError(VULKAN_HELP)


class PolicyObservation(gym.ObservationWrapper):
    """ManiSkill's batched obs dict -> ``{"image": uint8 [B,H,W,3], "proprio": float32 [B,9]}``.

    proprio = TCP pose (xyz, wxyz quaternion) + the two finger joint positions.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.env.unwrapped.update_obs_space(self.observation(self.env.unwrapped._init_raw_obs))

    def observation(self, observation: dict) -> dict:
        import torch

        image = observation["sensor_data"]["base_camera"]["rgb"][..., :3]
        if "hand_camera" in observation["sensor_data"]:  # a wrist-inset view (tasks.WRIST_INSET_VIEWS)
            inset = observation["sensor_data"]["hand_camera"]["rgb"][..., :3]
            image = image.clone()
            image[..., : inset.shape[-3], -inset.shape[-2]:, :] = inset
        fingers = observation["agent"]["qpos"][..., -2:]
        proprio = torch.cat([observation["extra"]["tcp_pose"], fingers], dim=-1)
        return {"image": image, "proprio": proprio.float()}


class TaskInfo(gym.Wrapper):
    """One CPU worker: picks its task from ``options["tasks"][index]`` and reports the instruction.

    ``info["task"]`` and ``info["instruction"]`` are set on every reset and step.
    """

    def __init__(self, env: gym.Env, index: int, seed: int | None):
        super().__init__(env)
        self.index = index
        self._first_seed = seed

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        options = dict(options or {})
        if "tasks" in options:
            options["task"] = options.pop("tasks")[self.index]
        if seed is None and self._first_seed is not None:
            seed = self._first_seed
        self._first_seed = None
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, self._add(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, self._add(info)

    def _add(self, info: dict) -> dict:
        task = self.env.unwrapped.tasks[0]
        return {**info, "task": task, "instruction": instruction(task)}


class BatchedTaskInfo(gym.vector.VectorWrapper):
    """GPU counterpart of :class:`TaskInfo` over ManiSkill's own batched env."""

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        options = dict(options or {})
        if "tasks" in options:
            options["task"] = options.pop("tasks")
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, self._add(info)

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        return obs, reward, terminated, truncated, self._add(info)

    def _add(self, info: dict) -> dict:
        base = self.env.unwrapped
        return {**info, "task": np.array(base.tasks, dtype=object),
                "instruction": np.array(base.instructions, dtype=object)}


def _make_single(
    tasks: list[str], image_size: int, max_episode_steps: int, index: int, seed: int | None, sim_backend: str,
    reward_mode: str, camera: str,
) -> gym.Env:
    """Build one CPU sub-env (runs inside the worker process)."""
    os.environ.setdefault("MS_SKIP_ASSET_DOWNLOAD_PROMPT", "1")
    from mani_skill.utils.wrappers.gymnasium import CPUGymWrapper

    env = _gym_make(tasks, image_size, max_episode_steps, sim_backend, reward_mode, num_envs=1, camera=camera)
    env = CPUGymWrapper(PolicyObservation(env), ignore_terminations=True, record_metrics=True)
    return TaskInfo(env, index, seed)


def _sensor_sizes(camera: str, image_size: int) -> dict[str, dict[str, int]]:
    """ManiSkill's per-camera ``sensor_configs``: the base view at ``image_size``, a wrist inset at its share."""
    sizes = {"base_camera": dict(width=image_size, height=image_size)}
    if camera in WRIST_INSET_VIEWS:
        inset = round(image_size * WRIST_INSET_SHARE)  # make_env checks image_size >= 16
        sizes["hand_camera"] = dict(width=inset, height=inset)
    return sizes


def _gym_make(tasks: list[str], image_size: int, max_episode_steps: int, sim_backend: str, reward_mode: str,
              num_envs: int, camera: str):
    import vla_compress.envs.maniskill_suite as suite

    try:
        return gym.make(
            suite.ENV_ID,
            num_envs=num_envs,
            tasks=tasks,
            camera=camera,
            obs_mode="rgb",
            control_mode=CONTROL_MODE,
            reward_mode=reward_mode,
            sim_backend=sim_backend,
            render_backend="cpu" if sim_backend == "physx_cpu" else "gpu",
            sensor_configs=_sensor_sizes(camera, image_size),
            max_episode_steps=max_episode_steps,
        )
    except RuntimeError as err:
        if "vulkan" in str(err).lower() or "vk::" in str(err):
            raise RuntimeError(VULKAN_HELP) from err
        raise


def make_env(
    suite: str = "maniskill",
    tasks: str | list[str] = "ind",
    num_envs: int = 1,
    image_size: int = 128,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    sim_backend: str = "physx_cpu",
    reward_mode: str = "dense",
    camera: str = DEFAULT_CAMERA,
) -> gym.vector.VectorEnv:
    """A vectorised env of ``num_envs`` sub-envs, each running one of ``tasks`` per episode.

    tasks: 'ind', 'ood', 'all', a task id or a list of ids; a sub-env samples from them at reset unless
    ``reset(options={"tasks": [one id per sub-env]})`` fixes them. Observations are
    ``{"image": uint8 [N,H,W,3], "proprio": float32 [N,9]}``; ``info["instruction"]`` and ``info["task"]``
    hold one string per sub-env. Actions are [N,7] in [-1,1] for ``pd_ee_delta_pose`` (xyz delta x0.1 m,
    rotation delta, gripper target -1 closed / +1 open). Episodes never terminate early; they truncate
    after ``max_episode_steps``. ``physx_cpu`` uses ``AsyncVectorEnv`` (spawn) over ``CPUGymWrapper``
    workers; ``physx_cuda`` uses ManiSkill's GPU batching (tensors on the GPU). ``reward_mode``: "dense"
    (RLRC's eq. 6: 1.0 per step while the cube rests on the plate, 0.1 while it is grasped) or "sparse"
    (the 1.0 term only). ``camera``: the ManiSkill suite's view, "front", "workspace" (closer,
    framed on the objects) or "workspace+wrist" (the default: with a wrist-camera inset; see ``tasks.CAMERAS``).

    ``suite="libero_spatial"`` or ``"libero_10"`` returns :func:`~vla_compress.envs.libero.make_libero_env`
    (optional extra ``vla-compress[libero]``; tasks are LIBERO task names or indices 0..9, 'all'/'ind'
    for all ten; ``sim_backend`` and ``reward_mode`` do not apply: LIBERO's reward is its success signal).
    """
    check_reward_mode(reward_mode)
    if suite in LIBERO_SUITES:
        return make_libero_env(suite, tasks, num_envs, image_size, seed, max_episode_steps)
    from vla_compress.envs.maniskill_suite import DEFAULT_EPISODE_STEPS

    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    if not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
    if sim_backend not in SIM_BACKENDS:
        raise ValueError(f"sim_backend must be one of {SIM_BACKENDS}, got {sim_backend!r}")
    check_camera(camera)
    max_episode_steps = DEFAULT_EPISODE_STEPS if max_episode_steps is None else max_episode_steps
    if max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps!r}")
    tasks = resolve_tasks(tasks)
    check_vulkan()

    if sim_backend == "physx_cuda":
        from mani_skill.vector.wrappers.gymnasium import ManiSkillVectorEnv

        env = PolicyObservation(_gym_make(tasks, image_size, max_episode_steps, sim_backend, reward_mode, num_envs,
                                          camera))
        envs = ManiSkillVectorEnv(env, num_envs, ignore_terminations=True, record_metrics=True)
        envs = BatchedTaskInfo(envs)
        if seed is not None:
            envs.reset(seed=seed)
        return envs

    fns = [
        partial(_make_single, tasks, image_size, max_episode_steps, i,
                None if seed is None else seed + i, sim_backend, reward_mode, camera)
        for i in range(num_envs)
    ]
    if num_envs == 1:
        return gym.vector.SyncVectorEnv(fns)
    return gym.vector.AsyncVectorEnv(fns, context="spawn")


def env_info(envs: gym.vector.VectorEnv, info: dict[str, Any], key: str) -> list[str]:
    """Per-sub-env strings (``"task"`` or ``"instruction"``) from a vector env's info dict."""
    return [str(x) for x in np.asarray(info[key]).reshape(envs.num_envs)]
