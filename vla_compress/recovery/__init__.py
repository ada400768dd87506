"""Recovery after compression: SFT on demonstrations, then PPO in the simulator (RLRC stage 2)."""

from __future__ import annotations

from .ppo import PPOConfig, train_ppo
from .sft import SFTConfig, train_sft


def recover(model, sft: SFTConfig | None = None, rl: PPOConfig | None = None):
    """Run SFT (if `sft`), then PPO (if `rl`); returns the recovered model. Both configs are validated first."""
    if sft is None and rl is None:
        raise ValueError("recover() needs sft=SFTConfig(...) and/or rl=PPOConfig(...); both are None")
    if sft is not None and not isinstance(sft, SFTConfig):
        raise ValueError(f"sft must be an SFTConfig or None, got {type(sft).__name__}")
    if rl is not None and not isinstance(rl, PPOConfig):
        raise ValueError(f"rl must be a PPOConfig or None, got {type(rl).__name__}")
    for config in (sft, rl):
        if config is not None:
            config.validate()
    if sft is not None:
        model = train_sft(model, sft)
    if rl is not None:
        model = train_ppo(model, rl)
    return model


__all__ = ["PPOConfig", "SFTConfig", "recover", "train_ppo", "train_sft"]
