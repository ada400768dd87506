"""Reader for LIBERO's HDF5 demonstration files, yielding the same samples as :class:`DemoDataset`.

LIBERO layout (one file per task, ``<task name>_demo.hdf5``)::

    data/                       attrs: problem_info (JSON with "language_instruction"), env_args, ...
        demo_0/
            actions         [T,7] float  xyz delta, axis-angle delta, gripper (-1 open, +1 closed)
            obs/agentview_rgb  [T,H,W,3] uint8   rendered upside down by LIBERO
            obs/ee_states   [T,6]  end-effector position + axis-angle orientation
            obs/gripper_states [T,2]  finger joint positions
        demo_1/ ...

Samples follow OpenVLA's LIBERO preprocessing: the image is rotated 180 degrees (``img[::-1, ::-1]``)
and, by default, no-op steps are dropped (OpenVLA's ``*_no_noops`` data: translation and rotation
norm < 1e-4 and gripper unchanged). The gripper is converted to the convention used at inference by
:func:`vla_compress.envs.libero.make_libero_env`: ``gripper="signed"`` (default) gives ``+1`` open /
``-1`` closed, as the ManiSkill suite; ``gripper="unit"`` gives OpenVLA's ``1`` open / ``0`` closed
(``1 - clip(g, 0, 1)``, OpenVLA's ``libero_dataset_transform``). The instruction comes from
``problem_info["language_instruction"]``, else from the file name.

Not read: the modified-RLDS copies OpenVLA fine-tunes on (``libero_spatial_no_noops`` etc.); reading
them needs TensorFlow (``tensorflow_datasets``), which this package does not depend on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vla_compress.data.demos import ACTION_MASK, _stats, _task_files
from vla_compress.data.hdf5_files import ProcessLocalFiles

GRIPPER_CONVENTIONS = ("signed", "unit")


def instruction_from_filename(path: str | Path) -> str:
    """'KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5' -> 'turn on the stove' (LIBERO's own rule)."""
    stem = Path(path).name.removesuffix(".hdf5").removesuffix("_demo")
    words = stem.split("_")
    for i, word in enumerate(words):  # drop a leading SCENE prefix such as KITCHEN_SCENE3_
        if re.fullmatch(r"SCENE\d+", word):
            words = words[i + 1:]
            break
    return " ".join(words)


def _instruction(f: h5py.File, path: Path) -> str:
    info = f["data"].attrs.get("problem_info")
    if info is not None:
        text = json.loads(info if isinstance(info, str) else info.decode()).get("language_instruction")
        if text:
            return str(text).strip().strip('"')
    return instruction_from_filename(path)


def _demo_names(f: h5py.File) -> list[str]:
    return sorted(f["data"].keys(), key=lambda n: int(n.rsplit("_", 1)[-1]) if n[-1].isdigit() else n)


def convert_gripper(actions: np.ndarray, gripper: str = "signed") -> np.ndarray:
    """LIBERO's actions [T,7] (gripper -1 open / +1 closed) -> float32 in the ``gripper`` convention."""
    if gripper not in GRIPPER_CONVENTIONS:
        raise ValueError(f"gripper must be one of {GRIPPER_CONVENTIONS}, got {gripper!r}")
    out = np.asarray(actions, dtype=np.float32).copy()
    g = out[:, -1]
    out[:, -1] = 1.0 - np.clip(g, 0.0, 1.0) if gripper == "unit" else -g
    return out


def keep_steps(actions: np.ndarray, drop_noops: bool = True) -> np.ndarray:
    """Indices of the steps kept: all, or those that are not no-ops in OpenVLA's sense."""
    if not drop_noops:
        return np.arange(len(actions))
    still = np.linalg.norm(actions[:, :-1], axis=1) < 1e-4
    same_gripper = np.r_[False, actions[1:, -1] == actions[:-1, -1]]
    return np.flatnonzero(~(still & same_gripper))


class LiberoDataset:
    """Map-style dataset over the steps of LIBERO HDF5 demo files (a directory, or one file).

    Items are ``{"image": uint8 [H,W,3], "instruction": str, "action": float32 [7], "task": str,
    "episode": str, "proprio": float32 [8]}``; ``task`` is the file name without ``_demo.hdf5``
    and ``episode`` the demo group name (``demo_3``). Works with ``DataLoader`` workers.
    """

    def __init__(self, path: str | Path, gripper: str = "signed", drop_noops: bool = True,
                 dataset_name: str | None = None):
        if gripper not in GRIPPER_CONVENTIONS:
            raise ValueError(f"gripper must be one of {GRIPPER_CONVENTIONS}, got {gripper!r}")
        self.path, self.gripper, self.drop_noops = Path(path), gripper, drop_noops
        self.dataset_name = dataset_name or (self.path.name if self.path.is_dir() else self.path.parent.name)
        self._files = _task_files(self.path)
        self._index: list[tuple[int, str, int]] = []
        self._meta: dict[int, tuple[str, str]] = {}
        self._actions: dict[tuple[int, str], np.ndarray] = {}
        for fi, file in enumerate(self._files):
            with h5py.File(file, "r") as f:
                if "data" not in f:
                    raise ValueError(f"{str(file)!r} is not a LIBERO demo file (no 'data' group)")
                self._meta[fi] = (file.name.removesuffix(".hdf5").removesuffix("_demo"), _instruction(f, file))
                for name in _demo_names(f):
                    raw = f["data"][name]["actions"][()]
                    steps = keep_steps(raw, drop_noops)
                    self._actions[fi, name] = convert_gripper(raw[steps], gripper)
                    self._index += [(fi, name, int(t)) for t in steps]
        if not self._index:
            raise ValueError(f"dataset {str(self.path)!r} has no demo steps")
        self._h5 = ProcessLocalFiles(self._files)
        self._row: dict[tuple[int, str], dict[int, int]] = {key: {} for key in self._actions}
        for fi, name, t in self._index:  # raw step t -> its row among the kept actions
            rows = self._row[fi, name]
            rows[t] = len(rows)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        fi, name, t = self._index[idx]
        obs = self._h5[fi]["data"][name]["obs"]
        task, text = self._meta[fi]
        proprio = [obs[k][t] for k in ("ee_states", "gripper_states") if k in obs]
        item = {
            "image": np.ascontiguousarray(obs["agentview_rgb"][t][::-1, ::-1]),
            "instruction": text,
            "action": self._actions[fi, name][self._row[fi, name][t]],
            "task": task,
            "episode": name,
        }
        if proprio:
            item["proprio"] = np.concatenate(proprio).astype(np.float32)
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))

    @property
    def num_episodes(self) -> int:
        return len(self._actions)

    @property
    def norm_stats(self) -> dict[str, Any]:
        """OpenVLA-form stats of the (converted, no-op filtered) actions; gripper mask False."""
        actions = list(self._actions.values())
        return {self.dataset_name: {
            "action": _stats(np.concatenate(actions), ACTION_MASK),
            "num_transitions": int(sum(len(a) for a in actions)),
            "num_trajectories": len(actions),
        }}
