"""`benchmarks/rollout_phases.py`: the phases an episode reached, read from its recorded states."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from vla_compress.data.demos import STATE_DIM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import rollout_phases  # noqa: E402


def states(steps: int, grasp_at: int | None, lift_at: int | None, over_at: int | None) -> np.ndarray:
    """`[steps, STATE_DIM]`: cube at (0.1, 0.1, 0.02), plate at (-0.1, 0), events from the given steps."""
    col = rollout_phases.state_columns()
    s = np.zeros((steps, STATE_DIM), np.float32)
    s[:, col["cube_pos"]] = [0.1, 0.1, 0.02]
    s[:, col["plate_pos"]] = [-0.1, 0.0, 0.0]
    if grasp_at is not None:
        s[grasp_at:, col["is_grasped"]] = 1.0
    if lift_at is not None:
        s[lift_at:, col["cube_pos"].start + 2] = 0.1
    if over_at is not None:
        s[over_at:, col["cube_pos"].start:col["cube_pos"].start + 2] = [-0.09, 0.01]
    return s


def write(path: Path, episodes: list[tuple[np.ndarray, bool]], gripper: float = -1.0) -> None:
    """Episodes with `states`, 8 px frames and expert actions whose gripper is `gripper` throughout."""
    with h5py.File(path, "w") as f:
        for i, (state, success) in enumerate(episodes):
            group = f.create_group(f"episode_{i:05d}")
            group.create_dataset("state", data=state)
            group.create_dataset("rgb", data=np.zeros((len(state), 8, 8, 3), np.uint8))
            group.create_dataset("actions", data=np.full((len(state), 7), gripper, np.float32))
            group.attrs.update(success=success, instruction="put the red cube on the blue plate")


def test_phases_and_failures_of_recorded_episodes(tmp_path, capsys):
    write(tmp_path / "task_a.hdf5", [(states(30, 10, 12, 20), True), (states(60, 8, 11, 21), False)])
    write(tmp_path / "task_b.hdf5", [(states(60, 9, None, None), False), (states(60, None, None, None), False)])
    summary = rollout_phases.summarise(tmp_path)
    assert summary["episodes"] == 4
    assert summary["phases"]["grasped"] == {"reached": 0.75, "median_step": 9.0}
    assert summary["phases"]["lifted"] == {"reached": 0.5, "median_step": 11.5}
    assert summary["phases"]["over plate"] == {"reached": 0.5, "median_step": 20.5}
    assert summary["phases"]["placed"] == {"reached": 0.25, "median_step": 30.0}
    assert summary["median_steps_left_over_plate"] == 24.5  # (30 - 20, 60 - 21)
    assert summary["failed_after"] == {"over plate": 1, "grasped": 1, "nothing": 1}
    rollout_phases.main([str(tmp_path)])
    assert "| 75% (9) | 50% (12) | 50% (20) | 25% (30) | 24 |" in capsys.readouterr().out


def test_a_directory_without_episodes_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no episode files"):
        rollout_phases.summarise(tmp_path)


def test_carry_losses_tell_opened_fingers_from_a_slip_and_count_regrasps(tmp_path):
    col = rollout_phases.state_columns()
    width = col["gripper_width"].start
    opened = states(60, 10, 12, None)
    opened[10:, width] = 0.04
    opened[30:, col["is_grasped"]] = 0.0
    opened[29:, width] = 0.08  # the fingers open one step before the cube is free
    opened[45:, col["is_grasped"]] = 1.0  # and it is grasped again
    slipped = states(60, 10, 12, None)
    slipped[10:, width] = 0.04
    slipped[30:, col["is_grasped"]] = 0.0  # free with the gap unchanged
    held = states(60, 10, 12, None)  # lifted and held to the end: not a loss
    write(tmp_path / "task_a.hdf5", [(opened, False), (slipped, False), (held, False)])
    summary = rollout_phases.summarise(tmp_path)
    assert summary["carry_losses"] == {"episodes": 2, "opened": 1, "slipped": 1, "regrasped": 1}


def test_gripper_probe_compares_the_policy_with_the_expert_on_the_probed_frames(tmp_path, monkeypatch):
    col = rollout_phases.state_columns()
    episode = states(20, 5, 8, None)  # held and lifted from step 8: 12 frames
    episode[:, col["tcp_pos"].start + 2] = 0.2
    episode[:3, col["tcp_pos"].start + 2] = 0.03  # low and free for steps 0-2: 3 frames
    write(tmp_path / "task_a.hdf5", [(episode, False)], gripper=-1.0)

    class AlwaysOpen:
        def predict_action(self, images, instructions):
            assert len(images) == len(instructions) and images.shape[1:] == (8, 8, 3)
            return np.ones((len(images), 7), np.float32)

    import vla_compress.loading

    monkeypatch.setattr(vla_compress.loading, "load_vla", lambda path: AlwaysOpen())
    probe = rollout_phases.probe_gripper(tmp_path, tmp_path, batch_size=5)
    assert probe["holding, lifted"] == {"frames": 12, "policy_open": 1.0, "expert_open": 0.0, "disagree": 1.0}
    assert probe["free, TCP low"]["frames"] == 3
    assert "| x | holding, lifted | 12 | 100% | 0% | 100% |" in rollout_phases.probe_markdown({"x": probe})
