"""Scripted pick-and-place expert on privileged state (``info`` of the ManiSkill suite).

The expert is a function of the current state only (no phase counter), so it labels any state a
learner reaches correctly, as DAgger needs: after a missed grasp, a dropped cube, the wrong cube held
or the cube on the wrong plate it goes back to the step that state calls for.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vla_compress.envs.maniskill_suite import CUBE_HALF, PLATE_HALF_THICKNESS, PLATE_RADIUS

OPEN, CLOSED = 1.0, -1.0
HOVER_Z = 0.10  # above the cube's centre before descending
CARRY_Z = 0.12  # TCP height while carrying
PLACE_Z = 2 * PLATE_HALF_THICKNESS + CUBE_HALF + 0.01  # TCP height at which the cube is released
OPEN_WIDTH = 0.07  # finger opening (m) that counts as open; fully open is 0.08
_XY_TOL = 0.012  # aligned over the cube / plate
_GRASP_TOL = 0.006  # TCP this close to the cube centre: close the fingers
_CLOSING_TOL = 0.015  # while the fingers close, keep closing within this distance
_RELEASE_TOL = 0.01
_LIFT_Z = 0.08  # carrying below this height: lift straight up before moving sideways


def cube_placed(cube: np.ndarray, plate: np.ndarray, grasped: bool) -> bool:
    """The cube is released low over the target plate (it may still be settling)."""
    on_plate = np.linalg.norm(cube[:2] - plate[:2]) < PLATE_RADIUS - 0.01
    return bool(on_plate and cube[2] < PLACE_Z + 0.015 and not grasped)


def expert_target(tcp: np.ndarray, cube: np.ndarray, plate: np.ndarray, width: float, grasped: bool
                  ) -> tuple[np.ndarray, float]:
    """(TCP position to move towards, gripper command) for one state."""
    if cube_placed(cube, plate, grasped):
        return np.r_[tcp[:2], CARRY_Z], OPEN  # retreat upwards
    if grasped:
        to_plate = np.linalg.norm(tcp[:2] - plate[:2])
        if to_plate > _XY_TOL:
            if tcp[2] < _LIFT_Z and to_plate > 0.03:
                return np.r_[tcp[:2], CARRY_Z], CLOSED
            return np.r_[plate[:2], CARRY_Z], CLOSED
        target = np.r_[plate[:2], PLACE_Z]
        return target, OPEN if np.linalg.norm(target - tcp) < _RELEASE_TOL else CLOSED
    to_cube = np.linalg.norm(cube - tcp)
    if to_cube < _GRASP_TOL or (width < OPEN_WIDTH and to_cube < _CLOSING_TOL):
        return cube.copy(), CLOSED
    if np.linalg.norm(tcp[:2] - cube[:2]) > _XY_TOL:
        # a tcp below hover height first rises while it travels, so it does not sweep objects along
        return np.r_[cube[:2], cube[2] + HOVER_Z], OPEN
    if width < OPEN_WIDTH:
        return np.r_[cube[:2], tcp[2]], OPEN  # aligned but fingers not open yet: wait at this height
    return cube.copy(), OPEN


class ScriptedExpert:
    """Batched state-based expert: above cube, descend, close, lift, above plate, descend, open, retreat.

    ``act(info)`` returns float32 [B,7] ``pd_ee_delta_pose`` actions from ``tcp_pos``, ``cube_pos``,
    ``plate_pos``, ``gripper_width`` and ``is_grasped`` in ``info``. Rotation is never commanded.
    """

    def __init__(self, num_envs: int, gain: float = 1.0):
        self.num_envs = num_envs
        self.gain = gain

    def reset(self) -> None:
        """Kept for callers of the earlier stateful expert; the expert holds no episode state."""

    def act(self, info: dict[str, Any]) -> np.ndarray:
        tcp, cube, plate = (np.asarray(_numpy(info[k]), dtype=np.float64).reshape(self.num_envs, 3)
                            for k in ("tcp_pos", "cube_pos", "plate_pos"))
        width = np.asarray(_numpy(info["gripper_width"]), dtype=np.float64).reshape(self.num_envs)
        grasped = np.asarray(_numpy(info["is_grasped"]), dtype=bool).reshape(self.num_envs)
        actions = np.zeros((self.num_envs, 7), dtype=np.float32)
        for i in range(self.num_envs):
            target, gripper = expert_target(tcp[i], cube[i], plate[i], float(width[i]), bool(grasped[i]))
            actions[i, :3] = np.clip((target - tcp[i]) / 0.1 * self.gain, -1.0, 1.0)
            actions[i, 6] = gripper
        return actions


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value
