"""Scripted pick-and-place expert on privileged state (``info`` of the ManiSkill suite)."""

from __future__ import annotations

import numpy as np

from vla_compress.envs.maniskill_suite import CUBE_HALF, PLATE_HALF_THICKNESS

OPEN, CLOSED = 1.0, -1.0
_HOVER_Z = 0.10
_CARRY_Z = 0.12
# phase: (what to reach, gripper, steps to hold before moving on, position tolerance in m)
_PHASES = (
    ("above_cube", OPEN, 0, 0.012),
    ("at_cube", OPEN, 0, 0.006),
    ("at_cube", CLOSED, 4, None),
    ("lifted", CLOSED, 0, 0.02),
    ("above_plate", CLOSED, 0, 0.012),
    ("on_plate", CLOSED, 0, 0.01),
    ("on_plate", OPEN, 3, None),
    ("retreat", OPEN, 10**6, None),
)


class ScriptedExpert:
    """Batched state machine: above cube, descend, close, lift, above plate, descend, open, retreat.

    ``act(info)`` returns float32 [B,7] ``pd_ee_delta_pose`` actions from ``tcp_pos``, ``cube_pos`` and
    ``plate_pos`` in ``info``; call ``reset()`` at the start of every episode batch.
    """

    def __init__(self, num_envs: int, gain: float = 1.0):
        self.num_envs = num_envs
        self.gain = gain
        self.reset()

    def reset(self) -> None:
        self.phase = np.zeros(self.num_envs, dtype=np.int64)
        self.wait = np.zeros(self.num_envs, dtype=np.int64)

    def _target(self, name: str, tcp: np.ndarray, cube: np.ndarray, plate: np.ndarray) -> np.ndarray:
        if name == "above_cube":
            return np.r_[cube[:2], cube[2] + _HOVER_Z]
        if name == "at_cube":
            return cube.copy()
        if name == "lifted":
            return np.r_[tcp[:2], _CARRY_Z]
        if name == "above_plate":
            return np.r_[plate[:2], _CARRY_Z]
        if name == "on_plate":
            return np.r_[plate[:2], 2 * PLATE_HALF_THICKNESS + CUBE_HALF + 0.01]
        return np.r_[tcp[:2], _CARRY_Z]

    def act(self, info: dict) -> np.ndarray:
        tcp, cube, plate = (np.asarray(info[k], dtype=np.float64).reshape(self.num_envs, 3)
                            for k in ("tcp_pos", "cube_pos", "plate_pos"))
        actions = np.zeros((self.num_envs, 7), dtype=np.float32)
        for i in range(self.num_envs):
            name, gripper, hold, tol = _PHASES[self.phase[i]]
            target = self._target(name, tcp[i], cube[i], plate[i])
            err = target - tcp[i]
            if tol is None:
                self.wait[i] += 1
                done = self.wait[i] >= hold
            else:
                done = np.linalg.norm(err) < tol
            actions[i, :3] = np.clip(err / 0.1 * self.gain, -1.0, 1.0)
            actions[i, 6] = gripper
            if done and self.phase[i] < len(_PHASES) - 1:
                self.phase[i] += 1
                self.wait[i] = 0
        return actions
