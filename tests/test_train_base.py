"""`benchmarks/train_base.py`: the base-policy recipe end to end at smoke size, resume, and its losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_base  # noqa: E402

SMOKE = ["--episodes-per-task", "1", "--steps", "3", "--dagger-rounds", "1", "--dagger-episodes", "1",
         "--dagger-steps", "2", "--eval-episodes", "1", "--tasks-limit", "1", "--checkpoint-every", "2",
         "--warmup", "1", "--batch-size", "4", "--threads", "1", "--no-ship"]


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--batch-size", "0"), ("--dagger-rounds", "-1"),
                                         ("--eval-episodes", "0"), ("--lr", "0"), ("--bin-sigma", "-1")])
def test_bad_flags_exit_2_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_base.parse_args([flag, value])
    assert exit_info.value.code == 2
    assert flag.lstrip("-").split("-")[0] in capsys.readouterr().err


def test_smoothed_action_loss_is_lowest_at_the_target_and_orders_near_misses():
    target = torch.tensor([[100]])
    def loss_at(index: int) -> float:
        logits = torch.full((1, 1, 256), -10.0)
        logits[0, 0, index] = 10.0
        return train_base.smoothed_action_loss(logits, target, sigma=1.5).item()
    assert loss_at(100) < loss_at(101) < loss_at(103) < loss_at(140)


def test_aux_targets_add_the_offsets_the_expert_acts_on():
    import numpy as np

    state = np.arange(11, dtype=np.float32)[None]
    aux = train_base.aux_targets(state)
    assert aux.shape == (1, train_base.AUX_DIM)
    np.testing.assert_allclose(aux[0, 11:14], state[0, 3:6] - state[0, 0:3])  # cube - tcp


@pytest.mark.sim
@pytest.mark.slow
def test_recipe_runs_every_stage_and_resumes_without_recomputing(tmp_path):
    env = {**os.environ, "MS_SKIP_ASSET_DOWNLOAD_PROMPT": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "train_base.py"), "--output-dir", str(tmp_path), *SMOKE]
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    card = json.loads((tmp_path / "final" / "model_card.json").read_text())
    assert set(card["stage_seconds"]) == {"demos", "train_0", "dagger_1", "train_1", "eval"}
    assert card["success"]["ind"]["episodes"] == 1 and card["success"]["ood"]["episodes"] == 1
    low, high = card["success"]["ind"]["wilson95"]
    assert 0.0 <= low <= card["success"]["ind"]["rate"] <= high <= 1.0
    assert card["lm_parameters"] / card["parameters"] >= 0.6
    assert (tmp_path / "dagger_1" / "summary.json").exists()
    assert (tmp_path / "train_1" / "step_00000002").is_dir()

    from vla_compress import load_vla

    model = load_vla(tmp_path / "final")
    assert model.config.text_config.num_hidden_layers >= 8 and model.config.norm_stats

    seconds = card["stage_seconds"]
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "final" / "model_card.json").read_text())
    assert again["stage_seconds"] == seconds  # every stage was cached: nothing ran twice
    assert again["success"] == card["success"]
