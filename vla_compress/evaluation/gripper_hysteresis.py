"""Gripper hysteresis: the gripper changes state only when a policy asks for the change several steps running.

A single-frame policy decides open / close afresh at every control step, so one wrong frame while
carrying a cube opens the fingers and drops it (our base policy's largest loss: docs/model_card.md).
Requiring the other state on `switch_after` consecutive steps before switching filters isolated
mistakes at the cost of `switch_after - 1` steps of delay on real switches. It is action smoothing of
the gripper alone, as robot stacks do with a debounced gripper command; the arm's xyz / rotation
actions pass through unchanged. Written here because no library we use has a per-environment,
episode-reset gripper filter for batched policies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vla_compress.envs.tasks import CLOSED, OPEN


def check_switch_after(switch_after: Any) -> None:
    """Raise ValueError naming `switch_after` unless it is an int >= 1."""
    if isinstance(switch_after, bool) or not isinstance(switch_after, (int, np.integer)) or switch_after < 1:
        raise ValueError(f"switch_after must be an int >= 1, got {switch_after!r}")


class GripperHysteresis:
    """`policy` with a debounced gripper: a stateful policy, one gripper state per environment (batch row).

    `predict_action(images, instructions, unnorm_key=None)` returns `policy`'s actions ([B, 7] float32)
    with the gripper column held at the executed state (+1 open / -1 closed) until the policy has
    asked for the other state `switch_after` steps in a row; while the policy agrees with the held
    state its own gripper value passes through. A row's first step after `reset()` takes the policy's
    command. `switch_after=1` is the policy unchanged. `decode` is an OpenVLA model's decode path, as
    in :func:`~vla_compress.evaluation.evaluate`.
    """

    def __init__(self, policy: Any, switch_after: int = 2, decode: str | None = None) -> None:
        from vla_compress.modeling.modeling_openvla import action_predictor

        check_switch_after(switch_after)
        self.policy = policy
        self.switch_after = int(switch_after)
        self._predict = action_predictor(policy, decode)
        self._held: np.ndarray | None = None  # [B] executed state; NaN: a row that has not acted since reset
        self._asked_other = np.zeros(0, dtype=np.int64)  # [B] consecutive steps asking for the other state

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        """Forget the gripper state of every row (or of `env_ids`): their next command is taken as it is."""
        if env_ids is None or self._held is None:
            self._held = None
            return
        rows = list(env_ids)
        self._held[rows] = np.nan
        self._asked_other[rows] = 0

    def predict_action(self, images: Any, instructions: Sequence[str], unnorm_key: str | None = None) -> np.ndarray:
        action = self._predict(images, instructions, unnorm_key=unnorm_key)
        if hasattr(action, "detach"):
            action = action.detach().cpu().numpy()
        action = np.array(action, dtype=np.float32).reshape(-1, 7)
        asked = np.where(action[:, 6] >= 0.0, OPEN, CLOSED)
        if self._held is None or len(self._held) != len(action):
            self._held = np.full(len(action), np.nan)
            self._asked_other = np.zeros(len(action), dtype=np.int64)
        fresh = np.isnan(self._held)
        self._held[fresh] = asked[fresh]
        other = asked != self._held
        self._asked_other = np.where(other, self._asked_other + 1, 0)
        switch = self._asked_other >= self.switch_after
        self._held[switch] = asked[switch]
        self._asked_other[switch] = 0
        held_back = asked != self._held
        action[held_back, 6] = self._held[held_back]
        return action
