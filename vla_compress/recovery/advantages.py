"""Advantage estimators of PPO: GAE(gamma, lambda) as CleanRL computes it, and the group baseline
(RLOO / GRPO: an episode's return minus the mean return of the tries that shared its start state).

`estimate_advantages` applies the one `PPOConfig.advantage` names (or a callable of the same form).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from vla_compress.recovery.rollout import RolloutBuffer

if TYPE_CHECKING:
    from vla_compress.recovery.ppo_config import PPOConfig

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
