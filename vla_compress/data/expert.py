"""Scripted pick-and-place expert on privileged state (``info`` of the ManiSkill suite).

The expert is a function of the current state only (no phase counter), so it labels any state a
learner reaches correctly, as DAgger needs: after a missed grasp, a dropped cube, the wrong cube held
or the cube on the wrong plate it goes back to the step that state calls for.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vla_compress.envs.maniskill_suite import CUBE_HALF, PLATE_HALF_THICKNESS, PLATE_RADIUS
from vla_compress.envs.tasks import CLOSED, OPEN

HOVER_Z = 0.10  # above the cube's centre before descending
CARRY_Z = 0.12  # TCP height while carrying
PLACE_Z = 2 * PLATE_HALF_THICKNESS + CUBE_HALF + 0.01  # TCP height at which the cube is released
OPEN_WIDTH = 0.07  # finger opening (m) that counts as open; fully open is 0.08
_XY_TOL = 0.008  # this close over the cube in xy: the funnel reaches down to the cube
_FUNNEL = 0.03  # xy distance at which the descent over the cube starts
_GRASP_TOL = 0.006  # TCP this close to the cube centre: close the fingers
_CLOSING_TOL = 0.015  # while the fingers close, keep closing within this distance
_PLACE_XY_TOL = 0.01  # over the plate: the funnel reaches down to the release height
_PLACE_FUNNEL = 0.04  # xy distance at which the descent over the plate starts
_RELEASE_XY, _RELEASE_Z = 0.02, 0.012  # release within this xy distance and height above PLACE_Z
_LIFT_Z = 0.08  # carrying below this height far from the plate: lift straight up first


def cube_placed(cube: np.ndarray, plate: np.ndarray, grasped: bool) -> bool:
    """The cube is released low over the target plate (it may still be settling)."""
    on_plate = np.linalg.norm(cube[:2] - plate[:2]) < PLATE_RADIUS - 0.01
    return bool(on_plate and cube[2] < PLACE_Z + 0.015 and not grasped)


def funnel_height(xy_distance: float, low: float, high: float, tol: float, funnel: float) -> float:
    """Target height over a goal: `high` beyond `funnel` in xy, `low` within `tol`, linear in between.

    The descent and the xy correction happen together, so the label is continuous in the state: a learner
    a little off in xy keeps descending while it corrects, instead of climbing back (which made imprecise
    learners oscillate under the earlier all-or-nothing alignment rule)."""
    return low + (high - low) * float(np.clip((xy_distance - tol) / (funnel - tol), 0.0, 1.0))


def expert_target(tcp: np.ndarray, cube: np.ndarray, plate: np.ndarray, width: float, grasped: bool
                  ) -> tuple[np.ndarray, float]:
    """(TCP position to move towards, gripper command) for one state."""
    if cube_placed(cube, plate, grasped):
        return np.r_[tcp[:2], CARRY_Z], OPEN  # retreat upwards
    if grasped:
        to_plate = float(np.linalg.norm(tcp[:2] - plate[:2]))
        if tcp[2] < _LIFT_Z and to_plate > _PLACE_FUNNEL:
            return np.r_[tcp[:2], CARRY_Z], CLOSED
        z = funnel_height(to_plate, PLACE_Z, CARRY_Z, _PLACE_XY_TOL, _PLACE_FUNNEL)
        release = to_plate < _RELEASE_XY and tcp[2] < PLACE_Z + _RELEASE_Z
        return np.r_[plate[:2], z], OPEN if release else CLOSED
    to_cube = np.linalg.norm(cube - tcp)
    if to_cube < _GRASP_TOL or (width < OPEN_WIDTH and to_cube < _CLOSING_TOL):
        return cube.copy(), CLOSED
    # beyond the funnel a TCP below hover height first rises while it travels, so it does not sweep objects
    z = funnel_height(float(np.linalg.norm(tcp[:2] - cube[:2])), cube[2], cube[2] + HOVER_Z, _XY_TOL, _FUNNEL)
    if width < OPEN_WIDTH:
        z = max(z, float(tcp[2]))  # fingers not open yet: open before descending any further
    return np.r_[cube[:2], z], OPEN


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
