"""ManiSkill3 task "put the {colour} cube on the {colour} plate" (env id ``PutCubeOnPlate-v1``).

A Panda arm, a target cube, a distractor cube, a target plate and a distractor plate on a table.
Colours are set per episode from the task; positions are randomised over six slots with jitter.
Reward per step: 1.0 while the target cube rests, released, on the target plate; 0.1 while it is
grasped; else 0. ``info["success"]`` is the 1.0 condition. ``info`` also carries privileged state for
experts and training-only losses: positions, the objects' image keypoints and colours.
"""

from __future__ import annotations

import numpy as np
import sapien
import torch
from mani_skill.agents.robots import Panda
from mani_skill.envs.sapien_env import BaseEnv
from mani_skill.sensors.camera import CameraConfig
from mani_skill.utils import sapien_utils
from mani_skill.utils.building import actors
from mani_skill.utils.registration import register_env
from mani_skill.utils.scene_builder.table import TableSceneBuilder
from mani_skill.utils.structs.actor import Actor
from mani_skill.utils.structs.pose import Pose

from vla_compress.envs.tasks import (
    ALL_TASKS,
    CAMERAS,
    COLOUR_NAMES,
    COLOURS,
    DEFAULT_CAMERA,
    WRIST_INSET_SHARE,
    WRIST_INSET_VIEWS,
    check_camera,
    instruction,
    parse_task,
)

ENV_ID = "PutCubeOnPlate-v1"
DEFAULT_EPISODE_STEPS = 60

CUBE_HALF = 0.02
PLATE_RADIUS = 0.05
PLATE_HALF_THICKNESS = 0.005
# Object slots (x, y) in the table frame; the Panda base sits at x = -0.615.
_SLOTS = torch.tensor([[-0.12, -0.15], [-0.12, 0.0], [-0.12, 0.15], [0.05, -0.15], [0.05, 0.0], [0.05, 0.15]])
_SLOT_JITTER = 0.02
_CUBE_YAW_RANGE = np.pi / 12
# The wrist camera, in the panda_hand frame (z points from the wrist to the fingertips): behind the fingers,
# looking along z so the fingers and what lies between them fill the view (SAPIEN cameras look along +x).
_HAND_CAMERA_POSE = sapien.Pose(p=[0.06, 0.0, 0.0], q=[np.cos(-np.pi / 4), 0.0, np.sin(-np.pi / 4), 0.0])
_HAND_CAMERA_FOV = 1.4
# SAPIEN cylinders lie along x; this quaternion (wxyz) turns the axis to z.
_PLATE_QUAT = [np.cos(np.pi / 4), 0.0, np.sin(np.pi / 4), 0.0]


@register_env(ENV_ID, max_episode_steps=DEFAULT_EPISODE_STEPS)
class PutCubeOnPlateEnv(BaseEnv):
    """Language-conditioned pick-and-place; ``tasks`` is the pool sampled at reset when no task is given."""

    SUPPORTED_ROBOTS = ["panda"]
    SUPPORTED_REWARD_MODES = ["dense", "normalized_dense", "sparse", "none"]
    agent: Panda

    def __init__(
        self,
        *args,
        tasks: list[str] | tuple[str, ...] = ALL_TASKS,
        robot_uids: str = "panda",
        robot_init_qpos_noise: float = 0.02,
        camera: str = DEFAULT_CAMERA,
        **kwargs,
    ):
        for task in tasks:
            parse_task(task)
        check_camera(camera)
        self.camera = camera
        self.task_pool = list(tasks)
        self.robot_init_qpos_noise = robot_init_qpos_noise
        self.task_ids: torch.Tensor | None = None
        self.colour_ids: torch.Tensor | None = None  # [B, 4]: target cube, other cube, target plate, other plate
        super().__init__(*args, robot_uids=robot_uids, **kwargs)

    @property
    def _default_sensor_configs(self):
        eye, target, fov = CAMERAS[self.camera]
        size = 128  # make_env sets both cameras' sizes from its image_size
        pose = sapien_utils.look_at(eye=eye, target=target)
        configs = [CameraConfig("base_camera", pose, size, size, fov, 0.01, 100)]
        if self.camera in WRIST_INSET_VIEWS:
            inset = round(size * WRIST_INSET_SHARE)
            configs.append(CameraConfig("hand_camera", _HAND_CAMERA_POSE, inset, inset, _HAND_CAMERA_FOV, 0.01, 100,
                                        mount=self.agent.robot.links_map["panda_hand"]))
        return configs

    @property
    def _default_human_render_camera_configs(self):
        pose = sapien_utils.look_at(eye=[0.5, 0.4, 0.5], target=[-0.05, 0.0, 0.05])
        return CameraConfig("render_camera", pose, 512, 512, 1.0, 0.01, 100)

    def _load_agent(self, options: dict):
        super()._load_agent(options, sapien.Pose(p=[-0.615, 0, 0]))

    def _load_scene(self, options: dict):
        self.table_scene = TableSceneBuilder(self, robot_init_qpos_noise=self.robot_init_qpos_noise)
        self.table_scene.build()
        # One actor per sub-scene so every sub-scene owns its render material (colours differ per env).
        self.cube = self._per_scene("cube", lambda name, idx: actors.build_cube(
            self.scene, CUBE_HALF, COLOURS["red"], name, scene_idxs=idx,
            initial_pose=sapien.Pose(p=[0, 0, CUBE_HALF])))
        self.distractor_cube = self._per_scene("distractor_cube", lambda name, idx: actors.build_cube(
            self.scene, CUBE_HALF, COLOURS["green"], name, scene_idxs=idx,
            initial_pose=sapien.Pose(p=[0.1, 0, CUBE_HALF])))
        self.plate, self.distractor_plate = (
            self._per_scene(label, lambda name, idx, x=x: actors.build_cylinder(
                self.scene, PLATE_RADIUS, PLATE_HALF_THICKNESS, COLOURS["blue"], name, body_type="kinematic",
                scene_idxs=idx, initial_pose=sapien.Pose(p=[x, 0.2, PLATE_HALF_THICKNESS], q=_PLATE_QUAT)))
            for label, x in (("plate", 0.0), ("distractor_plate", 0.1))
        )

    def _per_scene(self, name: str, build) -> Actor:
        return Actor.merge([build(f"{name}_{i}", [i]) for i in range(self.num_envs)], name=name)

    def _initialize_episode(self, env_idx: torch.Tensor, options: dict):
        with torch.device(self.device):
            b = len(env_idx)
            self.table_scene.initialize(env_idx)
            if self.task_ids is None:
                self.task_ids = torch.zeros(self.num_envs, dtype=torch.long)
            self.task_ids[env_idx] = self._choose_tasks(env_idx, options)
            if self.colour_ids is None:
                self.colour_ids = torch.zeros(self.num_envs, 4, dtype=torch.long)
            self._apply_colours(env_idx)

            slots = torch.argsort(torch.rand(b, len(_SLOTS)), dim=1)[:, :4]
            xy = _SLOTS.to(self.device)[slots] + (torch.rand(b, 4, 2) * 2 - 1) * _SLOT_JITTER
            for k, (actor, z) in enumerate(
                ((self.cube, CUBE_HALF), (self.distractor_cube, CUBE_HALF),
                 (self.plate, PLATE_HALF_THICKNESS), (self.distractor_plate, PLATE_HALF_THICKNESS))
            ):
                p = torch.cat([xy[:, k], torch.full((b, 1), z)], dim=1)
                if k < 2:
                    yaw = (torch.rand(b) * 2 - 1) * _CUBE_YAW_RANGE
                    zero = torch.zeros(b)
                    q = torch.stack([torch.cos(yaw / 2), zero, zero, torch.sin(yaw / 2)], dim=1)
                else:
                    q = torch.tensor(_PLATE_QUAT).repeat(b, 1)
                actor.set_pose(Pose.create_from_pq(p, q))

    def _choose_tasks(self, env_idx: torch.Tensor, options: dict) -> torch.Tensor:
        """Global task indices for ``env_idx``: ``options["task"]`` (str or per-env list) or sampled."""
        task = options.get("task")
        if task is None:
            pool = torch.tensor([ALL_TASKS.index(t) for t in self.task_pool])
            return pool[torch.randint(len(pool), (len(env_idx),))]
        names = [task] * len(env_idx) if isinstance(task, str) else [task[int(i)] for i in env_idx]
        for name in names:
            parse_task(name)
        return torch.tensor([ALL_TASKS.index(t) for t in names])

    def _apply_colours(self, env_idx: torch.Tensor) -> None:
        """Colour target objects from the task and distractors with other, randomly drawn colours."""
        n = len(COLOUR_NAMES)
        for i in env_idx.tolist():
            cube, plate = (COLOUR_NAMES.index(c) for c in parse_task(ALL_TASKS[int(self.task_ids[i])]))
            other_cube = (cube + 1 + int(torch.randint(n - 1, ()))) % n
            other_plate = (plate + 1 + int(torch.randint(n - 1, ()))) % n
            self.colour_ids[i] = torch.tensor([cube, other_cube, plate, other_plate])
            for actor, colour in ((self.cube, cube), (self.distractor_cube, other_cube),
                                  (self.plate, plate), (self.distractor_plate, other_plate)):
                render_body = actor._objs[i].find_component_by_type(sapien.render.RenderBodyComponent)
                for shape in render_body.render_shapes:
                    shape.material.set_base_color(list(COLOURS[COLOUR_NAMES[colour]]))

    @property
    def tasks(self) -> list[str]:
        """The current task id of every sub-env."""
        return [ALL_TASKS[int(i)] for i in self.task_ids]

    @property
    def instructions(self) -> list[str]:
        """The current instruction of every sub-env."""
        return [instruction(t) for t in self.tasks]

    def evaluate(self) -> dict[str, torch.Tensor]:
        cube_p, plate_p = self.cube.pose.p, self.plate.pose.p
        # ManiSkill's is_grasping reads the last physics step's contacts, which at a reset are the previous
        # episode's: an episode that ended holding the cube would start "grasped". Nothing is held at a start.
        is_grasped = self.agent.is_grasping(self.cube) & (self.elapsed_steps > 0)
        on_plate_xy = torch.linalg.norm(cube_p[:, :2] - plate_p[:, :2], dim=1) < PLATE_RADIUS - 0.005
        resting_z = torch.abs(cube_p[:, 2] - (2 * PLATE_HALF_THICKNESS + CUBE_HALF)) < 0.01
        still = torch.linalg.norm(self.cube.linear_velocity, dim=1) < 0.1
        success = on_plate_xy & resting_z & still & ~is_grasped
        return dict(
            success=success,
            is_grasped=is_grasped,
            tcp_pos=self.agent.tcp_pose.p,
            cube_pos=cube_p,
            plate_pos=plate_p,
            gripper_width=self.agent.robot.get_qpos()[:, -2:].sum(dim=1),
            keypoints=self.keypoints(),
            object_colours=(self.colour_ids if self.colour_ids is not None
                            else torch.zeros(self.num_envs, 4, dtype=torch.long)).float(),
        )

    def keypoints(self) -> torch.Tensor:
        """[B, 10]: (u, v) in [0, 1] of the base camera's image for the target cube, the other cube, the
        target plate, the other plate and the TCP (u rightwards, v downwards)."""
        points = torch.stack([a.pose.p for a in (self.cube, self.distractor_cube, self.plate, self.distractor_plate)]
                             + [self.agent.tcp_pose.p], dim=1)  # [B, 5, 3]
        camera = self._sensors["base_camera"]
        params = camera.get_params()
        extrinsic, intrinsic = params["extrinsic_cv"].to(points), params["intrinsic_cv"].to(points)
        in_camera = points @ extrinsic[:, :, :3].transpose(1, 2) + extrinsic[:, None, :, 3]
        pixels = in_camera @ intrinsic.transpose(1, 2)
        size = torch.tensor([camera.config.width, camera.config.height], dtype=points.dtype, device=points.device)
        return (pixels[..., :2] / pixels[..., 2:] / size).flatten(1)

    def _get_obs_extra(self, info: dict):
        return dict(tcp_pose=self.agent.tcp_pose.raw_pose)

    def compute_dense_reward(self, obs, action, info: dict) -> torch.Tensor:
        return torch.where(info["success"], 1.0, torch.where(info["is_grasped"], 0.1, 0.0))

    def compute_normalized_dense_reward(self, obs, action, info: dict) -> torch.Tensor:
        return self.compute_dense_reward(obs, action, info)
