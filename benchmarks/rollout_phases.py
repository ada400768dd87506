"""Where do a policy's episodes go wrong? The phases each recorded episode reached, from its states.

Reads episode files with privileged state (`generate_demos` or `collect_dagger` output: one HDF5 file
per task, `state` columns as `vla_compress.data.demos.STATE_FIELDS`) and reports, per directory, how
many episodes reached each phase of a pick-and-place (grasped, lifted, carried over the target plate,
placed = success) and at which step, the steps left after the cube first came over the plate, and
each failed episode's last phase; of the episodes that lifted the cube and never brought it over the
plate, how many dropped it with the fingers opening, let it slip with them closed, and grasped it again.
Comparing the expert's demos with a learner's DAgger rollouts shows the phase the learner loses:

    python benchmarks/rollout_phases.py /work/runs/base3/demos /work/runs/base3/dagger_1

With ``--checkpoint`` it also runs a policy (greedy) on the recorded frames and compares its gripper
command with the expert's label where that matters most: frames holding the lifted cube (the expert
says closed) and frames with the TCP low and nothing held (the expert says open unless it is closing
on the cube):

    python benchmarks/rollout_phases.py /work/runs/base3/dagger_2 --checkpoint /work/runs/base3/train_1/step_00001000
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

from vla_compress.data.demos import STATE_FIELDS

LIFT_M = 0.02  # the cube counts as lifted this far above its start height
LOW_TCP_M = 0.05  # the TCP counts as low below this height (the cube's top is at 0.04)
OPENING_M = 0.002  # the fingers count as opening when their gap widens by more than this in one step
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


def held_and_lifted(state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per step of one episode's states `[T, STATE_DIM]`: is the target cube grasped, is it lifted."""
    col = state_columns()
    grasped = state[:, col["is_grasped"]][:, 0] > 0.5
    grasped[0] = False  # nothing is held at a start; files recorded before 2026-12-01 may say otherwise there
    height = state[:, col["cube_pos"]][:, 2]
    return grasped, height - height[0] > LIFT_M


def episode_phases(state: np.ndarray, success: bool) -> dict[str, int | None]:
    """The first step of each phase in one episode's states `[T, STATE_DIM]` (None: never reached)."""
    col = state_columns()
    cube, plate = state[:, col["cube_pos"]], state[:, col["plate_pos"]]
    grasped, lifted = held_and_lifted(state)
    phases = {
        "grasped": first_step(grasped),
        "lifted": first_step(lifted),
        "over plate": first_step(np.linalg.norm(cube[:, :2] - plate[:, :2], axis=1) < OVER_PLATE_M),
    }
    phases["placed"] = len(state) if success else None
    return phases


def carry_failure(state: np.ndarray) -> dict[str, bool] | None:
    """How a lifted cube was lost: None unless the cube was lifted and later released (not grasped).

    ``opened``: the finger gap widened at the release step or the one before (the policy opened);
    else it slipped out of closed fingers. ``regrasped``: grasped again later in the episode."""
    grasped, lifted = held_and_lifted(state)
    width = state[:, state_columns()["gripper_width"]][:, 0]
    lift = first_step(lifted)
    if lift is None:
        return None
    release = first_step(~grasped[lift:])
    if release is None:
        return None
    release += lift
    widened = np.diff(width[max(release - 2, 0):release + 1]) > OPENING_M
    return {"opened": bool(widened.any()), "regrasped": bool(grasped[release:].any())}


def summarise(directory: Path) -> dict:
    """Phase statistics of every episode in `directory`'s HDF5 files."""
    episodes = []
    for path in sorted(directory.glob("*.hdf5")):
        with h5py.File(path, "r") as f:
            for name in f:
                group = f[name]
                state = np.asarray(group["state"])
                episodes.append({"phases": episode_phases(state, bool(group.attrs["success"])),
                                 "carry": carry_failure(state), "length": len(state)})
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
    lost = [e["carry"] for e in episodes
            if e["phases"]["lifted"] is not None and e["phases"]["over plate"] is None and e["carry"] is not None]
    summary["carry_losses"] = {"episodes": len(lost), "opened": sum(c["opened"] for c in lost),
                               "slipped": sum(not c["opened"] for c in lost),
                               "regrasped": sum(c["regrasped"] for c in lost)}
    return summary


def gripper_frames(directory: Path) -> dict[str, list[tuple[np.ndarray, str, float]]]:
    """(frame, instruction, expert gripper label) of the two probed frame kinds in `directory`."""
    col = state_columns()
    frames: dict[str, list] = {"holding, lifted": [], "free, TCP low": []}
    for path in sorted(directory.glob("*.hdf5")):
        with h5py.File(path, "r") as f:
            for name in f:
                group = f[name]
                state, actions = np.asarray(group["state"]), np.asarray(group["actions"])
                grasped, lifted = held_and_lifted(state)
                low = state[:, col["tcp_pos"]][:, 2] < LOW_TCP_M
                for kind, rows in (("holding, lifted", grasped & lifted), ("free, TCP low", ~grasped & low)):
                    for t in np.flatnonzero(rows):
                        frames[kind].append((group["rgb"][t], str(group.attrs["instruction"]), float(actions[t, 6])))
    return frames


def probe_gripper(checkpoint: Path, directory: Path, batch_size: int = 64) -> dict[str, dict]:
    """Per frame kind: frames, and the shares where the policy / the expert command open, and disagree."""
    from vla_compress.loading import load_vla

    model = load_vla(checkpoint)
    result = {}
    for kind, items in gripper_frames(directory).items():
        if not items:
            result[kind] = {"frames": 0}
            continue
        commands = []
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            actions = model.predict_action(np.stack([c[0] for c in chunk]), [c[1] for c in chunk])
            commands.append(actions[:, 6])
        policy_open = np.concatenate(commands) > 0
        expert_open = np.array([c[2] for c in items]) > 0
        result[kind] = {"frames": len(items), "policy_open": float(policy_open.mean()),
                        "expert_open": float(expert_open.mean()),
                        "disagree": float((policy_open != expert_open).mean())}
    return result


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
    lines += ["", "| episodes | lifted, lost before the plate | fingers opened | slipped (closed) | grasped again |",
              "|---|---|---|---|---|"]
    for name, s in summaries.items():
        c = s["carry_losses"]
        lines.append(f"| {name} | {c['episodes']} | {c['opened']} | {c['slipped']} | {c['regrasped']} |")
    return "\n".join(lines) + "\n"


def probe_markdown(probes: dict[str, dict]) -> str:
    lines = ["| episodes | frames of | count | policy: open | expert: open | disagree |", "|---|---|---|---|---|---|"]
    for name, probe in probes.items():
        for kind, p in probe.items():
            if p["frames"]:
                lines.append(f"| {name} | {kind} | {p['frames']} | {p['policy_open']:.0%} | {p['expert_open']:.0%} "
                             f"| {p['disagree']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directories", type=Path, nargs="+", help="demo or DAgger directories")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a policy directory (OpenVLA format) whose gripper commands to probe on the frames")
    args = parser.parse_args(argv)
    for directory in [*args.directories, *([args.checkpoint] if args.checkpoint else [])]:
        if not directory.is_dir():
            parser.error(f"{directory} is not a directory")
    summaries = {str(d.name): summarise(d) for d in args.directories}
    print(markdown(summaries))
    if args.checkpoint is not None:
        probes = {str(d.name): probe_gripper(args.checkpoint, d) for d in args.directories}
        print(probe_markdown(probes))
        for name, probe in probes.items():
            summaries[name]["gripper_probe"] = probe
    return summaries


if __name__ == "__main__":
    main()
