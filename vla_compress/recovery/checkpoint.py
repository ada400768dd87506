"""Atomic, resumable training checkpoints (model, optimizer, scheduler, RNG, step).

A checkpoint is one directory `step_{N}/` holding the model's `save_pretrained` output and
`trainer_state.pt`. It is written to a temporary sibling and renamed into place, so a crash never
leaves a half-written checkpoint; `latest_checkpoint` only sees complete ones.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(output_dir: str | Path, step: int, model, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `output_dir/step_{step}` atomically; keep the newest `keep` checkpoints."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"step_{step:08d}"
    tmp = output_dir / f".tmp_step_{step:08d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.glob("step_*") if (p / STATE_FILE).exists())


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The saved optimizer/scheduler/step state; restores the RNG as a side effect."""
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
    set_rng_state(state["rng"])
    return state
