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


def write(path: Path, episodes: list[tuple[np.ndarray, bool]]) -> None:
    with h5py.File(path, "w") as f:
        for i, (state, success) in enumerate(episodes):
            group = f.create_group(f"episode_{i:05d}")
            group.create_dataset("state", data=state)
            group.attrs["success"] = success


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
