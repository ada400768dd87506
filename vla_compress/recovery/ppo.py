"""PPO for a VLA (RL4VLA / RLRC): actor and critic share the model; actions are 7 tokens.

Read it against CleanRL's ``ppo.py``: `train_ppo` alternates `collect_rollout` (vectorised envs,
temperature-1.0 sampling, storage `[T, N]`), `compute_gae` (GAE(gamma, lambda)) and `ppo_update`
(one epoch of minibatches, clipped policy loss, clipped Huber value loss, grad-norm clip);
`advantage="group"` swaps GAE for a group baseline (envs of a group share a start state). Metrics go
to `output_dir/metrics.jsonl` (+ TensorBoard) under CleanRL's names; checkpoints are atomic and
`resume=True` continues a killed run. `accelerate` makes the same code run on one CPU, one GPU or
several processes (each process runs its own envs; gradients are all-reduced).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vla_compress.recovery.checkpoint import (
    check_output_dir,
    last_good_checkpoint_note,
    latest_checkpoint,
    load_trainer_state,
    run_identity,
    run_state,
    save_checkpoint,
)
from vla_compress.recovery.distributed import make_accelerator
from vla_compress.recovery.metrics import MetricsLogger
from vla_compress.recovery.rollout import (
    RolloutBuffer,
    act,
    env_actions,
    image_shape,
    info_flag,
    instructions_from_info,
    observation_images,
    training_inputs,
)
from vla_compress.recovery.validation import require_int, require_number
from vla_compress.recovery.value_head import ActorCritic, ValueHead, load_value_head

logger = logging.getLogger(__name__)

EnvFactory = Callable[[int], Any]  # seed -> gymnasium VectorEnv
ADVANTAGES = ("gae", "group")  # the estimators by name (ADVANTAGE_ESTIMATORS); a callable also works


@dataclass
class PPOConfig:
    """PPO settings; defaults follow RL4VLA's reference runs (REFERENCE.md section 3).

    A resume continues only the same run: the same starting model and the same fields, except those in
    `RESUME_MAY_CHANGE` (a longer `total_env_steps` extends a run)."""

    RESUME_MAY_CHANGE: ClassVar[tuple[str, ...]] = (
        "output_dir", "resume", "progress", "total_env_steps", "checkpoint_every", "keep_checkpoints", "eval_every",
        "eval_fn", "device", "num_threads", "max_env_restarts")

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


# ---- the PPO equations --------------------------------------------------------------------------------
def compute_gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, next_value: torch.Tensor,
                next_done: torch.Tensor, gamma: float = 0.99, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(gamma, lambda) as in CleanRL: `[T, N]` inputs -> (advantages, returns).

    `dones[t]` is 1 when observation t starts a new episode; `next_value`/`next_done` describe the
    observation after the last step. Time-limit bootstraps belong in `rewards` already.
    """
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros_like(rewards[0])
    num_steps = rewards.shape[0]
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            nextnonterminal = 1.0 - next_done
            nextvalues = next_value
        else:
            nextnonterminal = 1.0 - dones[t + 1]
            nextvalues = values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * lam * nextnonterminal * lastgaelam
    return advantages, advantages + values


def group_advantages(episode_returns: torch.Tensor, group_size: int, episode_steps: int) -> torch.Tensor:
    """Advantages `[E * episode_steps, N]` from episode returns `[E, N]` (E episode rounds of N envs, where
    envs `k * group_size ... (k + 1) * group_size - 1` shared a start state): every step of an episode gets its
    return minus the mean return of its group. Groups whose tries all ended alike carry no signal (zeros)."""
    rounds, num_envs = episode_returns.shape
    if group_size < 1 or num_envs % group_size:
        raise ValueError(f"group_size must be >= 1 and divide the number of envs ({num_envs}), got {group_size!r}")
    grouped = episode_returns.float().reshape(rounds, num_envs // group_size, group_size)
    advantages = (grouped - grouped.mean(-1, keepdim=True)).reshape(rounds, num_envs)
    return advantages.repeat_interleave(episode_steps, dim=0)


# (buffer, rollout stats, config) -> (advantages [T, N], returns [T, N], share of informative groups or None)
AdvantageEstimator = Callable[[RolloutBuffer, dict, "PPOConfig"],
                              tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]]


def gae_estimate(buffer: RolloutBuffer, stats: dict, config: PPOConfig
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """GAE advantages and returns; every rollout ends at an episode end (next value 0, next done 1)."""
    num_envs = buffer.rewards.shape[1]
    advantages, returns = compute_gae(buffer.rewards, buffer.values, buffer.dones, torch.zeros(num_envs),
                                      torch.ones(num_envs), config.gamma, config.gae_lambda)
    return advantages, returns, None


def group_estimate(buffer: RolloutBuffer, stats: dict, config: PPOConfig
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Group-baseline advantages (episode return minus its group's mean); the critic still learns GAE's
    returns (a diagnostic only). Also the share of groups whose tries ended differently."""
    _, returns, _ = gae_estimate(buffer, stats, config)
    episode_returns = torch.as_tensor(stats["episodic_return"]).reshape(-1, config.num_envs)
    advantages = group_advantages(episode_returns, config.group_size, config.episode_steps)
    spread = (episode_returns.reshape(-1, config.group_size).std(-1) > 0).float().mean()
    return advantages, returns, spread


def estimate_advantages(buffer: RolloutBuffer, stats: dict, config: PPOConfig
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`config.advantage`'s estimator: a name in `ADVANTAGE_ESTIMATORS` or a callable of the same form
    (e.g. a control that permutes the advantages, as benchmarks/ppo_tasks.py's shuffled run)."""
    estimator = config.advantage if callable(config.advantage) else ADVANTAGE_ESTIMATORS[config.advantage]
    return estimator(buffer, stats, config)


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {"gae": gae_estimate, "group": group_estimate}


def ppo_losses(new_log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
               new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, entropy: torch.Tensor,
               clip_coef: float = 0.2, vf_clip_coef: float = 0.2, huber_delta: float = 10.0,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pg_loss, v_loss, entropy, approx_kl, clipfrac) of one minibatch.

    Clipped surrogate on `ratio = exp(new - old)`; value loss = max of the Huber losses of the new and
    the clipped value (clipped to `old_values +- vf_clip_coef`); approx_kl is CleanRL's `(r - 1) - log r`.
    """
    logratio = new_log_probs - old_log_probs
    ratio = logratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()

    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()

    v_clipped = old_values + torch.clamp(new_values - old_values, -vf_clip_coef, vf_clip_coef)
    v_loss_unclipped = F.huber_loss(new_values, returns, reduction="none", delta=huber_delta)
    v_loss_clipped = F.huber_loss(v_clipped, returns, reduction="none", delta=huber_delta)
    v_loss = torch.max(v_loss_unclipped, v_loss_clipped).mean()
    return pg_loss, v_loss, entropy.mean(), approx_kl, clipfrac


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] (nan when returns are constant)."""
    var_y = returns.var().item()
    return float("nan") if var_y == 0 else 1.0 - (returns - values).var().item() / var_y


# ---- environments -----------------------------------------------------------------------------------------
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


# ---- rollout ------------------------------------------------------------------------------------------------
def run_episode(runner: EnvRunner, model, value_head, buffer: RolloutBuffer, t0: int, config: PPOConfig,
                generator: torch.Generator, reset_seed: int, device: torch.device) -> dict[str, np.ndarray]:
    """Fill rows `t0 .. t0 + episode_steps` of `buffer` with one episode of every env."""
    num_envs = buffer.rewards.shape[1]
    obs, info = runner.call("reset", seed=config.reset_seeds(reset_seed))
    instructions = instructions_from_info(info, num_envs)
    episodic_return = np.zeros(num_envs)
    success_once = np.zeros(num_envs, dtype=bool)
    for t in range(t0, t0 + config.episode_steps):
        images = observation_images(obs)
        buffer.images[t], buffer.instructions[t] = images, instructions
        buffer.dones[t] = 1.0 if t == t0 else 0.0  # observation t0 starts a new episode
        out = act(model, value_head, images, instructions, config.temperature, generator, device)
        buffer.action_indices[t], buffer.log_probs[t], buffer.values[t] = (
            out["action_indices"], out["log_probs"], out["values"])

        actions = env_actions(model, out["action_indices"], config.unnorm_key)
        obs, reward, terminated, _truncated, info = runner.call("step", actions)
        next_obs, step_info = step_result(obs, info)
        reward = torch.as_tensor(reward).float().cpu().reshape(num_envs)  # numpy or (GPU sim) torch
        episodic_return += reward.numpy()
        success_once |= info_flag(step_info, "success", num_envs)
        if t == t0 + config.episode_steps - 1 and config.bootstrap_truncated:
            # the episode is cut by the time limit, not ended: bootstrap with V(final observation)
            final_values = act(model, value_head, observation_images(next_obs), instructions, 0.0, None,
                               device)["values"]
            not_terminated = ~torch.as_tensor(terminated).bool().cpu().reshape(num_envs)
            reward = reward + config.gamma * final_values * not_terminated
        buffer.rewards[t] = reward
        if "instruction" in info:
            instructions = instructions_from_info(info, num_envs)
    return {"episodic_return": episodic_return, "success_once": success_once,
            "success_at_end": info_flag(step_info, "success", num_envs)}


def step_result(obs, info: dict) -> tuple[Any, dict]:
    """The observation and info that follow a step. An auto-resetting vector env (ManiSkill's
    `ManiSkillVectorEnv` with `physx_cuda`) returns the next episode's first frame when an episode ends
    and keeps the true ones in `info["final_observation"]` / `info["final_info"]`."""
    return info.get("final_observation", obs), info.get("final_info", info)


def collect_rollout(runner: EnvRunner, model, value_head, buffer: RolloutBuffer, config: PPOConfig,
                    generator: torch.Generator, seed: int, device: torch.device) -> dict[str, np.ndarray]:
    """Fill `buffer` with whole episodes; an episode interrupted by an env crash is re-collected."""
    model.eval()
    stats: dict[str, list[np.ndarray]] = {}
    for episode in range(buffer.num_steps // config.episode_steps):
        for attempt in range(config.max_env_restarts + 1):
            try:
                result = run_episode(runner, model, value_head, buffer, episode * config.episode_steps, config,
                                     generator, seed + episode * config.num_envs, device)
                break
            except EnvCrashed as err:
                if attempt == config.max_env_restarts:
                    raise RuntimeError(f"the env crashed {attempt + 1} times in a row; giving up") from err
                runner.restart(err)
        for key, value in result.items():
            stats.setdefault(key, []).append(value)
    return {key: np.concatenate(value) for key, value in stats.items()}


# ---- update ---------------------------------------------------------------------------------------------------
def ppo_update(agent, optimizer, accelerator, model, buffer: RolloutBuffer, advantages: torch.Tensor,
               returns: torch.Tensor, config: PPOConfig, generator: torch.Generator,
               policy_signal: bool = True) -> dict[str, float]:
    """One PPO update (update_epochs passes of shuffled minibatches); returns mean diagnostics.

    `policy_signal=False` (a rollout whose episodes earned no reward) zeroes the advantages: the update
    trains the critic only.
    """
    b_images = buffer.images.reshape(-1, *buffer.images.shape[2:])
    b_instructions = buffer.instructions.reshape(-1)
    b_action_indices = buffer.action_indices.reshape(-1, buffer.action_indices.shape[-1])
    b_log_probs, b_values = buffer.log_probs.reshape(-1), buffer.values.reshape(-1)
    b_advantages, b_returns = advantages.reshape(-1), returns.reshape(-1)
    if not policy_signal:
        b_advantages = torch.zeros_like(b_advantages)  # pg loss 0: only the critic learns from this rollout
    elif config.norm_adv:  # over the whole buffer, as in RL4VLA
        b_advantages = (b_advantages - b_advantages.mean()) / (b_advantages.std() + 1e-8)

    agent.train()
    device = accelerator.device
    micro = config.micro_batch_size or config.minibatch_size
    sums: dict[str, float] = {}
    n_minibatches = n_steps = 0
    stopped = False  # target_kl's early stop ends the whole update
    for _epoch in range(config.update_epochs):
        if stopped:
            break
        b_inds = torch.randperm(len(b_log_probs), generator=generator)
        for start in range(0, len(b_inds), config.minibatch_size):
            mb_inds = b_inds[start:start + config.minibatch_size]
            optimizer.zero_grad()
            chunks = mb_inds.split(micro)
            minibatch: dict[str, float] = {}
            for i, idx in enumerate(chunks):
                inputs = training_inputs(model, b_images[idx.numpy()], b_instructions[idx.numpy()],
                                         b_action_indices[idx], device)
                new_log_probs, entropy, new_values = agent(**inputs, temperature=config.temperature)
                pg_loss, v_loss, entropy_loss, approx_kl, clipfrac = ppo_losses(
                    new_log_probs, b_log_probs[idx].to(device), b_advantages[idx].to(device), new_values,
                    b_values[idx].to(device), b_returns[idx].to(device), entropy,
                    config.clip_coef, config.vf_clip_coef, config.huber_delta)
                loss = pg_loss - config.ent_coef * entropy_loss + config.vf_coef * v_loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite PPO loss (pg_loss={pg_loss.item()}, v_loss={v_loss.item()}); nothing was "
                        f"saved for this update; {last_good_checkpoint_note(config.output_dir)}. Check the rewards, "
                        "lower the learning rate, or use float32.")
                weight = len(idx) / len(mb_inds)
                with accelerator.no_sync(agent) if i < len(chunks) - 1 else nullcontext():
                    accelerator.backward(loss * weight)
                for key, value in (("policy_loss", pg_loss), ("value_loss", v_loss), ("entropy", entropy_loss),
                                   ("approx_kl", approx_kl), ("clipfrac", clipfrac)):
                    minibatch[key] = minibatch.get(key, 0.0) + value.item() * weight
            for key, value in minibatch.items():
                sums[key] = sums.get(key, 0.0) + value
            n_minibatches += 1
            stopped = kl_exceeded(accelerator, minibatch["approx_kl"], config.target_kl)
            if stopped:
                break  # this minibatch's step is not taken
            grad_norm = accelerator.clip_grad_norm_(agent.parameters(), config.max_grad_norm)
            if not torch.isfinite(torch.as_tensor(grad_norm)):
                raise FloatingPointError(f"non-finite gradient norm {float(grad_norm)}, not applied; "
                                         f"{last_good_checkpoint_note(config.output_dir)}")
            if not policy_signal and not config.critic_trains_backbone:
                # The policy's gradients are zero here, but Adam's momentum would still move it: leave it out.
                for param in optimizer.param_groups[0]["params"]:
                    param.grad = None
            optimizer.step()
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
            n_steps += 1
    metrics = {f"losses/{k}": v / (n_steps if k == "grad_norm" else n_minibatches) for k, v in sums.items()}
    metrics["charts/optimizer_steps"] = float(n_steps)
    metrics["losses/explained_variance"] = explained_variance(b_values, b_returns)
    metrics["charts/policy_updated"] = float(policy_signal)
    return metrics


def any_process(accelerator, flag: bool) -> bool:
    """True when `flag` holds on any process: all processes then take the same kind of update."""
    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), reduction="sum") > 0)


def kl_exceeded(accelerator, approx_kl: float, target_kl: float | None) -> bool:
    """Stable-Baselines3's early stop: the minibatch's approximate KL (mean over processes, so all of them
    stop together) is above 1.5 x `target_kl`."""
    if target_kl is None:
        return False
    kl = accelerator.reduce(torch.tensor(approx_kl, device=accelerator.device), reduction="mean")
    return float(kl) > 1.5 * target_kl


# ---- checkpoints ------------------------------------------------------------------------------------------
def _load_model_weights(model, checkpoint: Path) -> None:
    """Load a `save_pretrained` directory's weights into `model` (in place, exact)."""
    index = checkpoint / "model.safetensors.index.json"
    if index.exists():
        from transformers.modeling_utils import load_sharded_checkpoint

        load_sharded_checkpoint(model, str(checkpoint), strict=False)
        return
    _, unexpected = model.load_state_dict(load_file(str(checkpoint / "model.safetensors")), strict=False)
    if unexpected:
        raise ValueError(f"checkpoint {checkpoint} does not match the model: unexpected keys {unexpected[:5]}")


# ---- the training loop ------------------------------------------------------------------------------------
def train_ppo(model, config: PPOConfig) -> Any:
    """Fine-tune `model` (an `OpenVLAForActionPrediction`) with PPO in `config`'s envs; returns it."""
    config.validate()
    if getattr(model, "processor", None) is None:
        raise ValueError("the model has no processor; load it with vla_compress.load_vla(...)")
    accelerator = make_accelerator(config.device)
    rank, world = accelerator.process_index, accelerator.num_processes
    batch_size = config.steps_per_rollout * config.num_envs  # per process
    num_updates = config.total_env_steps // (batch_size * world)
    if num_updates < 1:
        raise ValueError(f"total_env_steps ({config.total_env_steps}) is less than one rollout over "
                         f"{world} processes ({batch_size * world})")
    output_dir = Path(config.output_dir).expanduser()
    run = run_identity(model, config)  # the model as given: a resume must start from the same one
    image_size = config.image_size or int(model.config.image_sizes[0])
    factory = config.env_factory or default_env_factory(config, image_size)

    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    if config.dtype is not None:
        model = model.to(getattr(torch, str(config.dtype).removeprefix("torch.")))
    model = model.to(accelerator.device)
    value_head = ValueHead(model.config.text_config.hidden_size).to(accelerator.device)
    agent = ActorCritic(model, value_head, config.critic_trains_backbone)
    optimizer = torch.optim.AdamW([
        {"params": [p for p in model.parameters() if p.requires_grad], "lr": config.learning_rate},
        {"params": list(value_head.parameters()), "lr": config.critic_learning_rate},
    ], weight_decay=config.weight_decay)

    start_update = 0
    checkpoint = latest_checkpoint(output_dir) if config.resume else None
    if checkpoint is not None:
        state = load_trainer_state(checkpoint, run)
        _load_model_weights(model, checkpoint)
        load_value_head(value_head, checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        start_update = int(state["update"])
        logger.info("resuming from %s (update %d)", checkpoint, start_update)
    agent, optimizer = accelerator.prepare(agent, optimizer)

    metrics_logger = MetricsLogger(output_dir) if accelerator.is_main_process else None
    runner = EnvRunner(factory, config.seed + 1_000_003 * rank)
    buffer: RolloutBuffer | None = None
    sample_generator = torch.Generator(device=accelerator.device)
    shuffle_generator = torch.Generator()
    progress = _progress(num_updates, start_update, config.progress and accelerator.is_main_process)
    try:
        for update in range(start_update, num_updates):
            # every update re-seeds from (seed, rank, update): a resumed run replays exactly
            update_seed = config.seed + 7919 * rank + 1_000_003 * (update + 1)
            sample_generator.manual_seed(update_seed)
            shuffle_generator.manual_seed(update_seed + 1)
            start_time = time.time()

            # 1. rollout
            if buffer is None:
                buffer = RolloutBuffer.allocate(config.steps_per_rollout, config.num_envs,
                                                image_shape(runner.envs))
            stats = collect_rollout(runner, model, value_head, buffer, config, sample_generator,
                                    update_seed, accelerator.device)
            rollout_time = time.time() - start_time

            # 2. advantages (the estimator chosen once, above) and the returns the critic regresses on
            advantages, returns, spread = estimate_advantages(buffer, stats, config)

            # 3. PPO update
            # the env's own rewards (the buffer's also hold time-limit bootstraps, i.e. the critic's guesses)
            signal = not config.skip_policy_without_reward or bool(np.any(stats["episodic_return"] != 0))
            group_metrics: dict[str, float] = {}
            if spread is not None:  # group baseline: a start state whose tries all ended alike teaches nothing
                signal = signal and bool(advantages.any())
                group_metrics["charts/informative_groups"] = accelerator.reduce(  # all processes
                    spread.to(accelerator.device), reduction="mean").item()
            signal = any_process(accelerator, signal and update >= config.critic_warmup_updates)
            metrics = ppo_update(agent, optimizer, accelerator, model, buffer, advantages, returns, config,
                                 shuffle_generator, policy_signal=signal)

            # 4. logs and checkpoints
            global_step = (update + 1) * batch_size * world
            metrics.update(_rollout_metrics(accelerator, stats))
            metrics.update(group_metrics)  # share of start states whose tries ended differently
            metrics["charts/learning_rate"] = optimizer.param_groups[0]["lr"]
            metrics["charts/critic_learning_rate"] = optimizer.param_groups[1]["lr"]
            metrics["charts/SPS"] = batch_size * world / max(time.time() - start_time, 1e-9)
            metrics["charts/rollout_SPS"] = batch_size * world / max(rollout_time, 1e-9)
            metrics["charts/env_restarts"] = runner.restarts
            metrics["charts/update"] = update + 1
            if config.eval_every and (update + 1) % config.eval_every == 0 and accelerator.is_main_process:
                metrics.update(_evaluate(model, config))
            if metrics_logger is not None:
                metrics_logger.log(global_step, metrics)
            is_last = update + 1 == num_updates
            if is_last or (config.checkpoint_every and (update + 1) % config.checkpoint_every == 0):
                _save(accelerator, agent, optimizer, output_dir, global_step, update + 1, config, run)
            progress.update(1)
            progress.set_postfix(ret=f"{metrics['charts/episodic_return']:.3f}",
                                 succ=f"{metrics['charts/success_rate']:.2f}",
                                 kl=f"{metrics['losses/approx_kl']:.4f}", sps=f"{metrics['charts/SPS']:.1f}")
    finally:
        progress.close()
        runner.close()
        if metrics_logger is not None:
            metrics_logger.close()
    model.eval()
    return accelerator.unwrap_model(agent).model


def _rollout_metrics(accelerator, stats: dict[str, np.ndarray]) -> dict[str, float]:
    """Episode statistics averaged over every env of every process."""
    means = torch.tensor([stats["episodic_return"].mean(), stats["success_at_end"].mean(),
                          stats["success_once"].mean()], dtype=torch.float32, device=accelerator.device)
    means = accelerator.reduce(means, reduction="mean")
    return {"charts/episodic_return": means[0].item(), "charts/success_rate": means[1].item(),
            "charts/success_once": means[2].item()}


def _save(accelerator, agent, optimizer, output_dir: Path, global_step: int, update: int, config: PPOConfig,
          run: dict[str, Any]) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(agent)
        state = {"update": update, "global_step": global_step, "optimizer": optimizer.state_dict(),
                 **run_state(run, unwrapped.model)}
        save_checkpoint(output_dir, global_step, unwrapped, state, keep=config.keep_checkpoints)
    accelerator.wait_for_everyone()


def _evaluate(model, config: PPOConfig) -> dict[str, float]:
    """Greedy evaluation through `config.eval_fn` or `vla_compress.evaluation.evaluate`, as `eval/...`."""
    eval_fn = config.eval_fn
    if eval_fn is None:
        try:
            from vla_compress.evaluation import evaluate
        except ImportError:
            logger.warning("eval_every is set but vla_compress.evaluation.evaluate is unavailable; skipping")
            return {}
        suite, tasks = config._suite_and_tasks()  # greedy: predict_action's default temperature is 0
        eval_fn = partial(evaluate, suite=suite, tasks=tasks, num_envs=config.num_envs, seed=config.seed,
                          image_size=config.image_size or int(model.config.image_sizes[0]),
                          max_episode_steps=config.episode_steps, unnorm_key=config.unnorm_key, progress=False)
    result = eval_fn(model)
    result = result if isinstance(result, dict) else vars(result)
    return {(k if k.startswith("eval/") else f"eval/{k}"): float(v) for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="ppo", unit="update", disable=not enabled)
