"""LIBERO: the HDF5 demo reader (always), the missing-extra error, and a real env rollout (``sim``)."""

from __future__ import annotations

import builtins
import importlib.util
import json

import h5py
import numpy as np
import pytest

from vla_compress.data.libero_hdf5 import LiberoDataset, convert_gripper, instruction_from_filename
from vla_compress.envs.libero import INSTALL_HELP, to_libero_gripper

INSTRUCTION = "pick up the black bowl next to the ramekin and place it on the plate"


def _write_demo_file(path, with_problem_info: bool = True) -> dict[str, np.ndarray]:
    """A LIBERO-layout file with 2 demos of 5 and 4 steps, 8x8 images; returns the raw actions."""
    rng = np.random.default_rng(0)
    actions = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        if with_problem_info:
            data.attrs["problem_info"] = json.dumps({"problem_name": "libero_tabletop_manipulation",
                                                     "language_instruction": INSTRUCTION})
        for d, steps in enumerate((5, 4)):
            a = rng.uniform(-0.5, 0.5, size=(steps, 7)).astype(np.float64)
            a[:, -1] = [-1, -1, 1, 1, 1][:steps]  # LIBERO: -1 open, +1 closed
            if d == 0:
                a[1, :6] = 0.0  # a no-op: no motion, gripper unchanged (open)
            demo = data.create_group(f"demo_{d}")
            demo.create_dataset("actions", data=a)
            img = np.zeros((steps, 8, 8, 3), np.uint8)
            img[:, 0, 0] = np.arange(steps)[:, None] + 10 * d  # marks the top-left pixel per step
            demo.create_dataset("obs/agentview_rgb", data=img)
            demo.create_dataset("obs/ee_states", data=rng.normal(size=(steps, 6)))
            demo.create_dataset("obs/gripper_states", data=rng.normal(size=(steps, 2)))
            actions[f"demo_{d}"] = a
    return actions


def test_hdf5_reader_samples_and_stats(tmp_path):
    path = tmp_path / "pick_up_the_black_bowl_next_to_the_ramekin_and_place_it_on_the_plate_demo.hdf5"
    raw = _write_demo_file(path)
    ds = LiberoDataset(tmp_path)
    assert len(ds) == 8 and ds.num_episodes == 2  # 9 steps, one no-op dropped
    item = ds[0]
    assert set(item) >= {"image", "instruction", "action", "task", "episode"}
    assert item["instruction"] == INSTRUCTION and item["episode"] == "demo_0"
    assert item["task"] == path.name.removesuffix("_demo.hdf5")
    assert item["image"].dtype == np.uint8 and item["image"].shape == (8, 8, 3)
    second = ds[1]  # raw step 2 (step 1 was the no-op): rotated 180 degrees, the mark moves to bottom-right
    assert second["image"][-1, -1, 0] == 2
    np.testing.assert_allclose(second["action"][:6], raw["demo_0"][2, :6], rtol=1e-6)
    assert item["action"].dtype == np.float32 and item["action"][-1] == 1.0  # LIBERO open -> +1
    assert second["action"][-1] == -1.0  # LIBERO closed -> -1
    assert item["proprio"].shape == (8,)
    stats = ds.norm_stats[tmp_path.name]
    assert stats["action"]["mask"] == [True] * 6 + [False]
    assert stats["num_transitions"] == 8 and stats["num_trajectories"] == 2
    assert len(stats["action"]["q01"]) == 7

    unit = LiberoDataset(path, gripper="unit", drop_noops=False)
    assert len(unit) == 9
    assert [unit[i]["action"][-1] for i in range(3)] == [1.0, 1.0, 0.0]  # OpenVLA: 1 open, 0 closed


def test_instruction_from_filename(tmp_path):
    assert instruction_from_filename("KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5") == "turn on the stove"
    path = tmp_path / "open_the_drawer_demo.hdf5"
    _write_demo_file(path, with_problem_info=False)
    assert LiberoDataset(path)[0]["instruction"] == "open the drawer"


def test_gripper_conventions_round_trip():
    libero = np.array([[0, 0, 0, 0, 0, 0, -1.0], [0, 0, 0, 0, 0, 0, 1.0]])
    for gripper in ("signed", "unit"):
        ours = convert_gripper(libero, gripper)
        np.testing.assert_array_equal(to_libero_gripper(ours, gripper)[:, -1], libero[:, -1])
    assert to_libero_gripper(np.array([0, 0, 0, 0, 0, 0, 0.3]), "unit")[-1] == 1.0  # 0.3 < 0.5: close


def test_missing_extra_names_it(monkeypatch):
    from vla_compress.envs import make_env

    real_import = builtins.__import__

    def no_libero(name, *args, **kwargs):
        if name == "libero" or name.startswith("libero."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_libero)
    with pytest.raises(ImportError, match=r'pip install "vla-compress\[libero\]"') as err:
        make_env(suite="libero_spatial", num_envs=1)
    assert str(err.value) == INSTALL_HELP


@pytest.mark.sim
@pytest.mark.skipif(importlib.util.find_spec("libero") is None,
                    reason='LIBERO is not installed: pip install "vla-compress[libero]"')
def test_libero_spatial_reset_and_step():
    from vla_compress.envs import make_env
    from vla_compress.envs.libero import resolve_libero_tasks, task_names

    names = task_names("libero_spatial")
    assert len(names) == 10 and resolve_libero_tasks("libero_spatial", [1, "2"]) == names[1:3]
    envs = make_env(suite="libero_spatial", tasks=0, num_envs=1, image_size=64, seed=0, max_episode_steps=3)
    try:
        obs, info = envs.reset(seed=[7])
        assert obs["image"].shape == (1, 64, 64, 3) and obs["image"].dtype == np.uint8
        assert obs["proprio"].shape == (1, 8)
        assert info["task"][0] == names[0] and info["instruction"][0].startswith("pick up the black bowl")
        assert info["init_state"][0] == 7
        for t in range(3):
            obs, reward, terminated, truncated, info = envs.step(np.zeros((1, 7), np.float32))
            assert not terminated[0] and truncated[0] == (t == 2) and not info["success"][0]
    finally:
        envs.close()


@pytest.mark.sim
@pytest.mark.skipif(importlib.util.find_spec("libero") is None,
                    reason='LIBERO is not installed: pip install "vla-compress[libero]"')
def test_evaluate_random_policy_on_libero_spatial(tmp_path):
    from vla_compress.envs.libero import task_names
    from vla_compress.evaluation import RandomPolicy, evaluate

    name = task_names("libero_spatial")[0]
    result = evaluate(RandomPolicy(0), suite="libero_spatial", tasks=[0], episodes_per_task=1, num_envs=1,
                      seed=3, image_size=32, max_episode_steps=5, progress=False, output=tmp_path / "eval.json")
    assert list(result.success_rate) == [name] and result.success_rate[name] in (0.0, 1.0)
    assert result.ind_success_rate == result.mean_success_rate == result.success_rate[name]
    assert result.ood_success_rate is None and result.episodes_per_task == 1
    (episode,) = result.episodes
    assert episode["task"] == name and episode["episode"] == 0 and episode["init_state"] == 3
    assert isinstance(episode["success"], bool)
    assert episode["length"] == 5 or episode["success"]  # full length unless it succeeded earlier
    assert result.mean_episode_length == episode["length"] and result.mean_return >= 0.0
    assert json.loads((tmp_path / "eval.json").read_text())["success_rate"] == {name: result.success_rate[name]}


def test_evaluate_rejects_unknown_suite():
    from vla_compress.evaluation import RandomPolicy, evaluate

    with pytest.raises(ValueError, match=r"suite must be one of .*'maniskill'.*'libero_spatial'.*'libero_10'"):
        evaluate(RandomPolicy(0), suite="libero_long")
