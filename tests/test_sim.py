"""Simulator tests for the ManiSkill suite, demo generation and evaluation (CPU, lavapipe)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("MS_SKIP_ASSET_DOWNLOAD_PROMPT", "1")
pytest.importorskip("mani_skill")

from vla_compress.envs import ALL_TASKS, TASKS_IND, TASKS_OOD, env_info, instruction, make_env  # noqa: E402

pytestmark = pytest.mark.sim
TASK = "red_cube_on_blue_plate"
HOLD_OPEN = np.array([[0, 0, 0, 0, 0, 0, 1]], dtype=np.float32)


@pytest.fixture(scope="module")
def env():
    envs = make_env(tasks=[TASK], num_envs=1, image_size=48, seed=0)
    yield envs
    envs.close()


def test_split_covers_every_colour():
    assert len(TASKS_IND) == 16 and len(TASKS_OOD) == 9 and set(TASKS_IND) | set(TASKS_OOD) == set(ALL_TASKS)
    for colour in ("red", "green", "blue", "yellow", "purple"):
        assert any(t.startswith(colour) for t in TASKS_IND)
        assert any(t.endswith(f"{colour}_plate") for t in TASKS_IND)
    assert instruction(TASK) == "put the red cube on the blue plate"


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="suite"):
        make_env(suite="libero_nope")
    with pytest.raises(ValueError, match="num_envs"):
        make_env(num_envs=0)
    with pytest.raises(ValueError, match="camera must be one of .*'front'.*'workspace'"):
        make_env(camera="top")
    with pytest.raises(ValueError, match="unknown task"):
        make_env(tasks=["pink_cube_on_red_plate"])
    with pytest.raises(ValueError, match="reward_mode must be one of"):
        make_env(reward_mode="shaped")


def test_reset_and_step_rgb(env):
    obs, info = env.reset(seed=1)
    assert obs["image"].shape == (1, 48, 48, 3) and obs["image"].dtype == np.uint8
    assert obs["proprio"].shape == (1, 9)
    assert env_info(env, info, "instruction") == [instruction(TASK)]
    obs, reward, terminated, truncated, info = env.step(HOLD_OPEN)
    assert obs["image"].shape == (1, 48, 48, 3) and reward.shape == (1,)


def test_keypoints_and_colours_point_at_the_objects():
    """info's image keypoints land on pixels of each object's colour; object_colours names them."""
    from vla_compress.envs.tasks import COLOUR_NAMES, COLOURS

    envs = make_env(tasks=[TASK], num_envs=1, image_size=128, seed=0)
    try:
        obs, info = envs.reset(seed=3)
        image = np.asarray(obs["image"][0], dtype=np.float32) / 255.0
        keypoints = np.asarray(info["keypoints"]).reshape(5, 2)
        colours = np.asarray(info["object_colours"]).reshape(4).astype(int)
        assert colours[0] == COLOUR_NAMES.index("red") and colours[2] == COLOUR_NAMES.index("blue")
        assert colours[1] != colours[0] and colours[3] != colours[2]
        for (u, v), colour in zip(keypoints[:4], colours):
            assert 0.0 < u < 1.0 and 0.0 < v < 1.0
            pixel = image[int(v * 128), int(u * 128)]
            # rendered colours are shaded and lit: compare chroma directions (colour minus its grey part)
            palette = np.array([COLOURS[c][:3] for c in COLOUR_NAMES])
            chroma = palette - palette.min(1, keepdims=True)
            seen = pixel - pixel.min()
            cosine = chroma @ seen / (np.linalg.norm(chroma, axis=1) * np.linalg.norm(seen))
            assert cosine.argmax() == colour
    finally:
        envs.close()


def _place_cube_on(env, plate_name: str):
    import torch
    from mani_skill.utils.structs.pose import Pose

    base = env.envs[0].unwrapped
    plate = getattr(base, plate_name)
    p = plate.pose.p.clone()
    p[:, 2] = 0.01 + 0.02
    base.cube.set_pose(Pose.create_from_pq(p, torch.tensor([[1.0, 0, 0, 0]])))
    return env.step(HOLD_OPEN)


def test_reward_on_right_plate(env):
    env.reset(seed=2)
    _, reward, _, _, info = _place_cube_on(env, "plate")
    assert reward[0] == pytest.approx(1.0) and bool(info["success"][0])


def test_reward_on_wrong_plate(env):
    env.reset(seed=3)
    _, reward, _, _, info = _place_cube_on(env, "distractor_plate")
    assert reward[0] == 0.0 and not bool(info["success"][0])


def _expert_episode(env, seed: int) -> tuple[list[float], float | None]:
    """One scripted-expert episode: the rewards of the grasped steps and the reward at the first success
    (None when it never succeeds); stops at the first success."""
    from vla_compress.data.expert import ScriptedExpert

    expert, grasp_rewards = ScriptedExpert(1), []
    _, info = env.reset(seed=seed)
    expert.reset()
    for _ in range(60):
        _, reward, _, _, info = env.step(expert.act(info))
        if bool(info["success"][0]):
            return grasp_rewards, float(reward[0])
        if bool(info["is_grasped"][0]):
            grasp_rewards.append(float(reward[0]))
    return grasp_rewards, None


def test_expert_grasp_reward_and_success(env):
    grasp_rewards, successes = [], []
    for seed in (10, 11, 12):
        grasped, placed = _expert_episode(env, seed)
        grasp_rewards += grasped
        successes.append(placed is not None)
    assert grasp_rewards and np.allclose(grasp_rewards, 0.1)
    assert np.mean(successes) >= 0.9


def test_sparse_reward_pays_placing_only():
    """reward_mode="sparse": grasping earns nothing, the cube resting on the right plate earns 1.0."""
    envs = make_env(tasks=[TASK], num_envs=1, image_size=48, seed=0, reward_mode="sparse")
    try:
        grasped, placed = _expert_episode(envs, seed=10)
    finally:
        envs.close()
    assert grasped and placed == 1.0 and not any(grasped)


def test_ppo_groups_start_alike():
    """PPO's advantage="group" resets each group of envs with one seed: same layout and task inside a group,
    another layout in the next group (the group baseline compares tries of one start state)."""
    from vla_compress.recovery.ppo import PPOConfig

    seeds = PPOConfig(num_envs=4, advantage="group", group_size=2).reset_seeds(7)
    envs = make_env(tasks=TASKS_IND[:4], num_envs=4, image_size=48, seed=0)
    try:
        obs, info = envs.reset(seed=seeds)
    finally:
        envs.close()
    images, tasks = obs["image"], env_info(envs, info, "task")
    assert seeds == [7, 7, 8, 8]
    assert np.array_equal(images[0], images[1]) and np.array_equal(images[2], images[3]) and tasks[0] == tasks[1]
    assert not np.array_equal(images[0], images[2])


def test_generate_and_read_demos(tmp_path):
    import h5py

    from vla_compress.data import DATASET_NAME, DemoDataset, generate_demos

    tasks = list(TASKS_IND[:2])
    summary = generate_demos(tmp_path, tasks=tasks, episodes_per_task=2, image_size=32, num_workers=1,
                             progress=False)
    assert summary["expert_success_rate"] >= 0.5
    ds = DemoDataset(tmp_path)
    assert ds.num_episodes == 4
    item = ds[0]
    assert item["image"].shape == (32, 32, 3) and item["image"].dtype == np.uint8
    assert item["action"].shape == (7,) and item["action"].dtype == np.float32
    assert item["instruction"] == instruction(item["task"])
    with h5py.File(tmp_path / f"{item['task']}.hdf5") as f:
        np.testing.assert_array_equal(f["episode_00000/actions"][0], item["action"])
        n_actions = sum(g["actions"].shape[0] for g in f.values())
    assert sum(1 for x in ds if x["task"] == item["task"]) == n_actions
    stats = ds.norm_stats[DATASET_NAME]
    assert stats == json.loads((tmp_path / "norm_stats.json").read_text())[DATASET_NAME]
    assert stats["action"]["mask"] == [True] * 6 + [False]
    assert stats["num_trajectories"] == 4 and stats["num_transitions"] == len(ds)
    assert all(len(stats["action"][k]) == 7 for k in ("mean", "std", "max", "min", "q01", "q99"))
    assert len(stats["proprio"]["mean"]) == 9


def test_demo_dataset_errors(tmp_path):
    from vla_compress.data import DemoDataset

    with pytest.raises(ValueError, match="does not exist"):
        DemoDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="no .hdf5"):
        DemoDataset(tmp_path)
    with pytest.raises(ValueError, match="at least one directory"):
        DemoDataset([])
    with pytest.raises(ValueError, match="missing.*does not exist"):  # a list's paths are checked as one path is
        DemoDataset([tmp_path / "missing"])


def test_evaluate_random_policy(tmp_path):
    from vla_compress.evaluation import RandomPolicy, evaluate

    tasks = [TASKS_IND[0], TASKS_OOD[0]]
    result = evaluate(RandomPolicy(0), tasks=tasks, episodes_per_task=1, num_envs=2, image_size=32,
                      max_episode_steps=10, progress=False, output=tmp_path / "eval.json")
    assert set(result.success_rate) == set(tasks)
    assert result.ind_success_rate is not None and result.ood_success_rate is not None
    assert result.mean_episode_length == 10.0 and len(result.episodes) == 2
    assert json.loads((tmp_path / "eval.json").read_text())["success_rate"] == result.success_rate


def test_wrist_inset_view_shows_the_held_cube():
    """'workspace+wrist' is the workspace view with the hand camera pasted top right; once the expert holds
    the (red) cube, the inset's lower-middle is red: the wrist camera sees what lies between the fingers."""
    from vla_compress.data.expert import ScriptedExpert
    from vla_compress.envs.tasks import WRIST_INSET_SHARE

    inset = round(128 * WRIST_INSET_SHARE)
    images = {}
    for camera in ("workspace", "workspace+wrist"):
        envs = make_env(tasks=[TASK], num_envs=1, image_size=128, seed=0, camera=camera)
        try:
            obs, info = envs.reset(seed=3)
            images[camera] = np.asarray(obs["image"][0])
            if camera == "workspace+wrist":
                expert = ScriptedExpert(1)
                for _ in range(30):
                    if np.asarray(info["is_grasped"]).any():
                        break
                    obs, _, _, _, info = envs.step(expert.act(info))
                assert np.asarray(info["is_grasped"]).all()
                held = np.asarray(obs["image"][0], dtype=np.float32)[: inset, -inset:]
        finally:
            envs.close()
    plain, wrist = images["workspace"], images["workspace+wrist"]
    outside = np.ones(plain.shape[:2], dtype=bool)
    outside[:inset, -inset:] = False
    assert np.array_equal(plain[outside], wrist[outside])
    assert np.abs(plain[:inset, -inset:].astype(int) - wrist[:inset, -inset:]).mean() > 20
    middle = held[: inset // 2, inset // 3: 2 * inset // 3].reshape(-1, 3)  # between the fingers, top of the view
    red = (middle[:, 0] > 1.5 * middle[:, 1]) & (middle[:, 0] > 1.5 * middle[:, 2])
    assert red.mean() > 0.3
