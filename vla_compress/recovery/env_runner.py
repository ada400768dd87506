"""The vector env PPO steps: re-created after a worker crash, built from the configured suite by default."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from vla_compress.recovery.ppo_config import EnvFactory, PPOConfig

logger = logging.getLogger(__name__)


class EnvCrashed(RuntimeError):
    """A vector-env call failed (e.g. a worker process died)."""


class EnvRunner:
    """Owns the vector env; re-creates it after a crash."""

    def __init__(self, factory: EnvFactory, seed: int) -> None:
        self.factory, self.seed, self.restarts = factory, seed, 0
        self.envs = factory(seed)

    def call(self, method: str, *args, **kwargs):
        try:
            return getattr(self.envs, method)(*args, **kwargs)
        except Exception as err:  # any worker failure means: rebuild the env
            raise EnvCrashed(f"vector env {method}() failed: {err!r}") from err

    def restart(self, reason: Exception) -> None:
        self.restarts += 1
        logger.warning("recreating the vector env after a crash (%s); restart #%d", reason, self.restarts)
        try:
            self.envs.close()
        except Exception as err:  # noqa: BLE001 - a dead env may fail to close
            logger.debug("closing the crashed env failed: %r", err)
        self.envs = self.factory(self.seed + 7919 * self.restarts)

    def close(self) -> None:
        self.envs.close()


def default_env_factory(config: PPOConfig, image_size: int) -> EnvFactory:
    """`seed -> make_env(...)` for the configured suite and tasks."""
    from vla_compress.envs import make_env

    suite, tasks = config._suite_and_tasks()
    return partial(_make_env_seeded, make_env, suite, tasks, config.num_envs, image_size, config.episode_steps,
                   config.reward_mode, config.sim_backend)


def _make_env_seeded(make_env, suite, tasks, num_envs, image_size, episode_steps, reward_mode, sim_backend, seed):
    return make_env(suite=suite, tasks=tasks, num_envs=num_envs, image_size=image_size, seed=seed,
                    max_episode_steps=episode_steps, reward_mode=reward_mode, sim_backend=sim_backend)


def step_result(obs, info: dict) -> tuple[Any, dict]:
    """The observation and info that follow a step. An auto-resetting vector env (ManiSkill's
    `ManiSkillVectorEnv` with `physx_cuda`) returns the next episode's first frame when an episode ends
    and keeps the true ones in `info["final_observation"]` / `info["final_info"]`."""
    return info.get("final_observation", obs), info.get("final_info", info)
