"""`PPOConfig`: every PPO setting, its defaults (RL4VLA's reference runs) and its validation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from vla_compress.modeling.modeling_openvla import check_decode
from vla_compress.recovery.checkpoint import check_output_dir
from vla_compress.recovery.validation import require_int, require_number

EnvFactory = Callable[[int], Any]  # seed -> gymnasium VectorEnv
ADVANTAGES = ("gae", "group")  # the estimators by name (ADVANTAGE_ESTIMATORS); a callable also works


@dataclass
class PPOConfig:
    """PPO settings; defaults follow RL4VLA's reference runs (REFERENCE.md section 3).

    A resume continues only the same run: the same starting model and the same fields, except those in
    `RESUME_MAY_CHANGE` (a longer `total_env_steps` extends a run)."""

    RESUME_MAY_CHANGE: ClassVar[tuple[str, ...]] = (
        "output_dir", "resume", "progress", "total_env_steps", "checkpoint_every", "keep_checkpoints", "eval_every",
        "eval_fn", "device", "num_threads", "max_env_restarts", "decode")

    # environment
    env: str = "maniskill"  # suite, or "suite:task_id"
    tasks: str | list[str] = "ind"  # 'ind', 'ood', 'all', a task id or a list of ids
    num_envs: int = 64  # parallel envs per process
    episode_steps: int = 80  # fixed episode length (the env's max_episode_steps)
    image_size: int | None = None  # env camera size; None = the model's input size
    unnorm_key: str | None = None  # norm_stats entry used to un-normalise actions
    env_factory: EnvFactory | None = None  # seed -> vector env; None builds `make_env(env, tasks, ...)`
    # "physx_cpu": CPU worker processes; "physx_cuda": ManiSkill's GPU batching (many envs, one process)
    sim_backend: str = "physx_cpu"
    # "dense": RLRC's reward (1.0 placed, 0.1 grasped); "sparse": 1.0 placed only (ManiSkill suite; see docs)
    reward_mode: str = "dense"
    # "gae": the critic's GAE (RL4VLA). "group": every `group_size` envs start from the same state (same reset
    # seed) and all steps of an episode get its return minus its group's mean return (RLOO / GRPO's baseline):
    # the outcome of the actions is compared with other tries of the same layout, not with a critic's guess.
    advantage: str | Callable = "gae"  # "gae", "group", or an `AdvantageEstimator` callable
    group_size: int = 4  # envs per start state with advantage="group"
    # schedule
    total_env_steps: int = 600_000  # RLRC trains for 0.6M env steps
    rollout_steps: int | None = None  # steps per env per update; None = one episode
    minibatch_size: int = 256  # transitions per optimizer step (per process)
    micro_batch_size: int | None = None  # gradient-accumulation chunk; None = whole minibatch
    update_epochs: int = 1
    # algorithm
    temperature: float = 1.0  # rollout sampling temperature
    # the rollouts' decode path (`generate_action_indices`): "dynamic", "static" or "compiled" (static cache
    # through torch.compile: the same samples, about 2x faster per step for a small policy on a CPU);
    # "frozen" refuses weights changed after it compiled them in, which every update does, so PPO refuses it
    decode: str = "dynamic"
    gamma: float = 0.99
    gae_lambda: float = 0.95
    norm_adv: bool = True  # normalise advantages over the whole buffer
    # A rollout with no reward anywhere carries no policy signal: normalising its advantages would blow the
    # critic's noise up to unit variance and push the policy at random. Such updates train the critic only.
    skip_policy_without_reward: bool = True
    # True (RL4VLA): the value loss also trains the shared VLA; False: only the value head learns from it.
    critic_trains_backbone: bool = True
    # The first updates train the critic only (verl's `critic_warmup`): a fresh value head's advantages are
    # noise, and policy steps taken on them undo what SFT taught before the critic can tell good from bad.
    critic_warmup_updates: int = 0
    clip_coef: float = 0.2
    vf_clip_coef: float = 0.2
    huber_delta: float = 10.0
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 10.0
    # Stop an update early once a minibatch's approximate KL exceeds 1.5 x target_kl (Stable-Baselines3's
    # rule, CleanRL's `target_kl`); None = always run every epoch. Guards small rollouts with several epochs.
    target_kl: float | None = None
    learning_rate: float = 1e-4  # policy (the VLA)
    critic_learning_rate: float = 3e-3  # value head
    weight_decay: float = 0.0
    bootstrap_truncated: bool = True  # add gamma * V(final obs) at time-limit ends
    # run
    device: str | None = None  # "cpu", "cuda"; None = cuda when available
    dtype: str | None = None  # "float32", "bfloat16", ...; None keeps the model's
    seed: int = 0
    num_threads: int | None = None  # torch CPU threads; 1 avoids oversubscription next to env workers
    output_dir: str | Path = "outputs/ppo"
    checkpoint_every: int = 10  # updates; 0 = only at the end
    keep_checkpoints: int = 2
    resume: bool = False
    max_env_restarts: int = 3  # consecutive env re-creations before giving up on an episode
    eval_every: int = 0  # updates; 0 = never
    eval_fn: Callable[[Any], dict[str, float]] | None = None  # model -> metrics; None = evaluation.evaluate
    progress: bool = True

    @property
    def steps_per_rollout(self) -> int:
        return self.rollout_steps if self.rollout_steps is not None else self.episode_steps

    def validate(self) -> None:
        """Raise ValueError for settings that cannot run; does no work."""
        for name in ("total_env_steps", "num_envs", "episode_steps", "minibatch_size", "update_epochs", "group_size"):
            require_int(name, getattr(self, name), 1)
        require_int("rollout_steps", self.rollout_steps, 1, optional=True)
        require_int("num_threads", self.num_threads, 1, optional=True)
        require_int("micro_batch_size", self.micro_batch_size, 1, optional=True)
        for name in ("checkpoint_every", "keep_checkpoints", "eval_every", "max_env_restarts", "critic_warmup_updates",
                     "seed"):
            require_int(name, getattr(self, name), 0)
        for name in ("learning_rate", "critic_learning_rate", "temperature", "clip_coef", "vf_clip_coef",
                     "huber_delta"):
            require_number(name, getattr(self, name))
        require_number("max_grad_norm", self.max_grad_norm, allow_inf=True)  # < 0 would reverse the gradient
        require_number("target_kl", self.target_kl, optional=True)
        for name in ("ent_coef", "vf_coef", "weight_decay"):
            require_number(name, getattr(self, name), inclusive=True)
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.steps_per_rollout % self.episode_steps:
            raise ValueError(f"rollout_steps ({self.steps_per_rollout}) must be a multiple of episode_steps "
                             f"({self.episode_steps}): rollouts hold whole episodes")
        buffer_size = self.steps_per_rollout * self.num_envs
        if self.minibatch_size > buffer_size:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) is larger than the rollout buffer "
                             f"(rollout_steps x num_envs = {buffer_size})")
        if self.micro_batch_size is not None and not 0 < self.micro_batch_size <= self.minibatch_size:
            raise ValueError(f"micro_batch_size must be in [1, minibatch_size], got {self.micro_batch_size!r}")
        if self.total_env_steps < buffer_size:
            raise ValueError(f"total_env_steps ({self.total_env_steps}) is less than one rollout ({buffer_size})")
        if self.device is not None and str(self.device).split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype is not None and not isinstance(getattr(torch, str(self.dtype).removeprefix("torch."), None),
                                                     torch.dtype):
            raise ValueError(f"dtype must name a torch dtype such as 'bfloat16', got {self.dtype!r}")
        check_decode(self.decode)
        if self.decode == "frozen":
            raise ValueError("decode='frozen' refuses weights changed after compiling, which every PPO update "
                             "does; PPO allows 'dynamic', 'static' or 'compiled'")
        if self.env_factory is None:
            self._suite_and_tasks()
        if not (callable(self.advantage) or self.advantage in ADVANTAGES):
            raise ValueError(f"advantage must be one of {ADVANTAGES} or a callable estimator, got {self.advantage!r}")
        from vla_compress.envs.vector import check_env_settings

        check_env_settings(self.reward_mode, self.sim_backend)
        if self.advantage == "group" and self.sim_backend != "physx_cpu" and self.env_factory is None:
            # the suite draws layouts with torch.rand, which ManiSkill seeds once per GPU batch (episode seed 0):
            # the sub-envs of a group would not start alike
            raise ValueError("advantage='group' needs per-env reset seeds: use sim_backend='physx_cpu' or an "
                             "env_factory whose sub-envs honour a list of seeds")
        if self.advantage == "group" and (self.group_size < 2 or self.num_envs % self.group_size):
            raise ValueError(f"group_size must be >= 2 and divide num_envs ({self.num_envs}) with "
                             f"advantage='group', got {self.group_size!r}")
        check_output_dir(Path(self.output_dir).expanduser().resolve(), self.resume)

    def reset_seeds(self, seed: int) -> int | list[int]:
        """The reset seed(s) of one episode round: one per group of envs with advantage="group"."""
        if self.advantage != "group":
            return seed  # the vector env gives sub-env i the seed `seed + i`
        return [seed + i // self.group_size for i in range(self.num_envs)]

    def _suite_and_tasks(self) -> tuple[str, list[str]]:
        from vla_compress.envs import SUITES, resolve_tasks

        suite, _, task = self.env.partition(":")
        if suite not in SUITES:
            raise ValueError(f"unknown env {self.env!r}; suites: {SUITES} (optionally 'suite:task_id')")
        return suite, resolve_tasks(task or self.tasks)
