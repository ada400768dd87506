"""The critic of PPO and the actor-critic module that shares the VLA between policy and value.

RL4VLA's critic is a small MLP on the last-layer hidden state at the position that predicts the
first action token (`critic_features`); the whole VLA is shared between actor and critic.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """hidden -> 512 -> 128 -> 1 with GELU, computed in float32."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_size, 512), nn.GELU(), nn.Linear(512, 128), nn.GELU(), nn.Linear(128, 1)
        )

    def forward(self, critic_features: torch.Tensor) -> torch.Tensor:
        """`[B, hidden]` features -> `[B]` values."""
        return self.net(critic_features.float()).squeeze(-1)


def save_value_head(value_head: ValueHead, directory: str | Path) -> Path:
    """Write the head as `directory/value_head.safetensors`."""
    path = Path(directory) / VALUE_HEAD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in value_head.state_dict().items()}, str(path))
    return path


def load_value_head(value_head: ValueHead, directory: str | Path) -> ValueHead:
    """Load `directory/value_head.safetensors` into `value_head` (in place)."""
    value_head.load_state_dict(load_file(str(Path(directory) / VALUE_HEAD_FILE)))
    return value_head


class ActorCritic(nn.Module):
    """The VLA (actor) and the value head (critic) as one module, so DDP syncs both.

    `forward` is the PPO training pass: it re-scores stored action tokens and predicts values.
    """

    def __init__(self, model: nn.Module, value_head: ValueHead, critic_trains_backbone: bool = True) -> None:
        super().__init__()
        self.model = model
        self.value_head = value_head
        self.critic_trains_backbone = critic_trains_backbone  # False: the value loss reaches the head only

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                action_indices: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, ...]:
        """(new_log_probs [B], entropy [B], new_values [B]) of sequences ending in the 7 action tokens."""
        out = self.model.action_forward(pixel_values, input_ids, attention_mask)
        new_log_probs, entropy = self.model.action_token_log_probs(out.action_logits, action_indices, temperature)
        features = out.critic_features if self.critic_trains_backbone else out.critic_features.detach()
        return new_log_probs, entropy, self.value_head(features)

    def save_pretrained(self, directory: str | Path, **kwargs) -> None:
        """The model's `save_pretrained` files plus `value_head.safetensors` (one checkpoint dir)."""
        self.model.save_pretrained(directory, **kwargs)
        save_value_head(self.value_head, directory)
