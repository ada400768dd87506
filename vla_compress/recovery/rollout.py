"""Rollout storage for PPO and the two model calls around it: acting and re-scoring.

Observations are stored as the env's uint8 images plus instruction strings (cheap to keep for
64 envs x 80 steps even at 224 px); the processor turns them into model inputs when needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..modeling import ACTION_DIM


@dataclass
class RolloutBuffer:
    """One update's transitions, `[T, N, ...]` (T steps per env, N envs), CleanRL's storage."""

    images: np.ndarray  # [T, N, H, W, 3] uint8
    instructions: np.ndarray  # [T, N] str (object)
    action_indices: torch.Tensor  # [T, N, 7] long, index into the 256-token action vocabulary
    log_probs: torch.Tensor  # [T, N] log-prob of the 7 tokens under the rollout policy
    values: torch.Tensor  # [T, N] critic estimates
    rewards: torch.Tensor  # [T, N] (time-limit bootstrap already folded in)
    dones: torch.Tensor  # [T, N] 1.0 where observation t is the first of a new episode

    @classmethod
    def allocate(cls, num_steps: int, num_envs: int, image_shape: tuple[int, ...]) -> RolloutBuffer:
        def zeros() -> torch.Tensor:
            return torch.zeros(num_steps, num_envs)

        return cls(
            images=np.zeros((num_steps, num_envs, *image_shape), dtype=np.uint8),
            instructions=np.empty((num_steps, num_envs), dtype=object),
            action_indices=torch.zeros(num_steps, num_envs, ACTION_DIM, dtype=torch.long),
            log_probs=zeros(), values=zeros(), rewards=zeros(), dones=zeros(),
        )

    @property
    def num_steps(self) -> int:
        return self.rewards.shape[0]


def observation_images(obs) -> np.ndarray:
    """uint8 `[N, H, W, 3]` images from a vector env's observation (a dict with "image", or an array)."""
    image = obs["image"] if isinstance(obs, dict) else obs
    if isinstance(image, torch.Tensor):
        image = image.cpu().numpy()
    return np.asarray(image, dtype=np.uint8)


def image_shape(envs) -> tuple[int, ...]:
    """`(H, W, 3)` of one sub-env's image observation."""
    space = envs.single_observation_space
    space = space["image"] if hasattr(space, "spaces") and "image" in space.spaces else space
    return tuple(space.shape)


def policy_inputs(model, images: np.ndarray, instructions, device: torch.device) -> dict[str, torch.Tensor]:
    """Processor outputs on `device` for a batch of images and instructions."""
    batch = model.processor(images, list(instructions))
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def act(model, value_head, images: np.ndarray, instructions, temperature: float,
        generator: torch.Generator | None, device: torch.device, decode: str = "dynamic") -> dict[str, torch.Tensor]:
    """Sample actions with batched decoding (`decode`: `generate_action_indices`' path): `action_indices
    [N,7]`, `log_probs [N]`, `values [N]` (CPU)."""
    out = model.generate_action_indices(**policy_inputs(model, images, instructions, device),
                                        temperature=temperature, generator=generator, decode=decode)
    values = value_head(out["critic_features"])
    return {"action_indices": out["action_indices"].cpu(), "log_probs": out["log_probs"].float().cpu(),
            "values": values.float().cpu()}


def training_inputs(model, images: np.ndarray, instructions, action_indices: torch.Tensor,
                    device: torch.device) -> dict[str, torch.Tensor]:
    """Model inputs whose sequences end with the stored action tokens (for re-scoring them)."""
    prompt = model.processor.tokenize(list(instructions))
    batch = {"pixel_values": model.processor.pixel_values(images),
             **model.append_action_tokens(prompt, action_indices.cpu())}
    return {**{k: v.to(device) for k, v in batch.items()}, "action_indices": action_indices.to(device)}


def env_actions(model, action_indices: torch.Tensor, unnorm_key: str | None) -> np.ndarray:
    """Env actions `[N, 7]`: un-normalised with the model's norm_stats, or normalised when it has none."""
    return model.decode_actions(action_indices, unnorm_key, normalized=not model.config.norm_stats)


def instructions_from_info(info: dict, num_envs: int) -> list[str]:
    """Per-env instruction strings from a vector env's info dict."""
    if "instruction" not in info:
        raise KeyError("the env's info has no 'instruction'; PPO needs one instruction per sub-env")
    return [str(x) for x in np.asarray(info["instruction"]).reshape(num_envs)]


def info_flag(info: dict, key: str, num_envs: int) -> np.ndarray:
    """A boolean per-env flag from info (all False when absent)."""
    if key not in info:
        return np.zeros(num_envs, dtype=bool)
    value = info[key]
    if isinstance(value, torch.Tensor):
        value = value.cpu().numpy()
    return np.asarray(value, dtype=bool).reshape(num_envs)
