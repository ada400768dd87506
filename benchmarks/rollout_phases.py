"""Where do a policy's episodes go wrong? The phases each recorded episode reached, from its states.

Reads episode files with privileged state (`generate_demos` or `collect_dagger` output: one HDF5 file
per task, `state` columns as `vla_compress.data.demos.STATE_FIELDS`) and reports, per directory, how
many episodes reached each phase of a pick-and-place (grasped, lifted, carried over the target plate,
placed = success) and at which step, the steps left after the cube first came over the plate, and
each failed episode's last phase. Comparing the expert's demos with a learner's DAgger rollouts shows
the phase the learner loses:

    python benchmarks/rollout_phases.py /work/runs/base3/demos /work/runs/base3/dagger_1
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

from vla_compress.data.demos import STATE_FIELDS

LIFT_M = 0.02  # the cube counts as lifted this far above its start height
OVER_PLATE_M = 0.03  # the cube counts as over the plate within this xy distance of its centre
PHASES = ("grasped", "lifted", "over plate", "placed")


def state_columns() -> dict[str, slice]:
    """Column slice of each `STATE_FIELDS` entry."""
    columns, start = {}, 0
    for name, width in STATE_FIELDS:
        columns[name] = slice(start, start + width)
        start += width
    return columns


def first_step(condition: np.ndarray) -> int | None:
    hits = np.flatnonzero(condition)
    return int(hits[0]) if len(hits) else None


def episode_phases(state: np.ndarray, success: bool) -> dict[str, int | None]:
    """The first step of each phase in one episode's states `[T, STATE_DIM]` (None: never reached)."""
    col = state_columns()
    cube, plate = state[:, col["cube_pos"]], state[:, col["plate_pos"]]
    grasped = state[:, col["is_grasped"]][:, 0] > 0.5
    grasped[0] = False  # nothing is held at a start; files recorded before 2026-12-01 may say otherwise there
    phases = {
        "grasped": first_step(grasped),
        "lifted": first_step(cube[:, 2] - cube[0, 2] > LIFT_M),
        "over plate": first_step(np.linalg.norm(cube[:, :2] - plate[:, :2], axis=1) < OVER_PLATE_M),
    }
    phases["placed"] = len(state) if success else None
    return phases


def summarise(directory: Path) -> dict:
    """Phase statistics of every episode in `directory`'s HDF5 files."""
    episodes = []
    for path in sorted(directory.glob("*.hdf5")):
        with h5py.File(path, "r") as f:
            for name in f:
                group = f[name]
                phases = episode_phases(np.asarray(group["state"]), bool(group.attrs["success"]))
                episodes.append({"phases": phases, "length": len(group["state"])})
    if not episodes:
        raise ValueError(f"{directory} holds no episode files (*.hdf5)")
    summary: dict = {"episodes": len(episodes), "phases": {}}
    for phase in PHASES:
        steps = [e["phases"][phase] for e in episodes if e["phases"][phase] is not None]
        summary["phases"][phase] = {"reached": len(steps) / len(episodes),
                                    "median_step": float(np.median(steps)) if steps else None}
    left = [e["length"] - e["phases"]["over plate"] for e in episodes if e["phases"]["over plate"] is not None]
    summary["median_steps_left_over_plate"] = float(np.median(left)) if left else None
    last = Counter()
    for e in episodes:
        if e["phases"]["placed"] is None:
            reached = [p for p in PHASES[:-1] if e["phases"][p] is not None]
            last[reached[-1] if reached else "nothing"] += 1
    summary["failed_after"] = dict(last)
    return summary


def markdown(summaries: dict[str, dict]) -> str:
    lines = ["| episodes | " + " | ".join(f"{p}: reached (median step)" for p in PHASES)
             + " | steps left once over the plate | failures by last phase reached |",
             "|---|" + "---|" * (len(PHASES) + 2)]
    for name, s in summaries.items():
        cells = [f"{s['phases'][p]['reached']:.0%} ({s['phases'][p]['median_step']:.0f})"
                 if s["phases"][p]["median_step"] is not None else "0%" for p in PHASES]
        left = s["median_steps_left_over_plate"]
        cells.append(f"{left:.0f}" if left is not None else "-")
        cells.append(", ".join(f"{k} {v}" for k, v in sorted(s["failed_after"].items())) or "none")
        lines.append(f"| {name} ({s['episodes']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directories", type=Path, nargs="+", help="demo or DAgger directories")
    args = parser.parse_args(argv)
    for directory in args.directories:
        if not directory.is_dir():
            parser.error(f"{directory} is not a directory")
    summaries = {str(d.name): summarise(d) for d in args.directories}
    print(markdown(summaries))
    return summaries


if __name__ == "__main__":
    main()
