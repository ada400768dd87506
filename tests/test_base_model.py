"""The shipped base policy `tiny-maniskill`: it loads from package data and has learned the expert."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vla_compress import load_vla
from vla_compress.modeling import build_model, preset_config
from vla_compress.modeling.presets import shipped_preset_dir
from vla_compress.recovery.sft import held_out_metrics


def test_shipped_preset_loads_as_float32_with_norm_stats():
    model = load_vla("tiny-maniskill")
    assert model.language_model.lm_head.weight.dtype.is_floating_point
    assert str(model.language_model.lm_head.weight.dtype) == "torch.float32"
    assert list(model.config.norm_stats) == ["maniskill_put_cube_on_plate"]
    actions = model.predict_action(np.zeros((2, 128, 128, 3), np.uint8), ["put the red cube on the blue plate"] * 2)
    assert actions.shape == (2, 7) and np.all(np.abs(actions) <= 1.0 + 1e-6)
    card = json.loads((shipped_preset_dir("tiny-maniskill") / "model_card.json").read_text())
    evaluation = json.loads((shipped_preset_dir("tiny-maniskill") / "eval.json").read_text())
    assert card["ind_success_rate"] == evaluation["ind_success_rate"]
    assert evaluation["episodes_per_task"] >= 10 and len(evaluation["success_rate"]) == 25


@pytest.mark.sim
def test_shipped_preset_predicts_fresh_expert_actions_far_better_than_untrained(tmp_path: Path):
    from vla_compress.data import DemoDataset, generate_demos

    generate_demos(tmp_path, tasks=["green_cube_on_yellow_plate"], episodes_per_task=1, seed=123, progress=False)
    samples = list(DemoDataset(tmp_path))
    trained = held_out_metrics(load_vla("tiny-maniskill"), samples)
    untrained = build_model(preset_config("tiny"))
    untrained.config.norm_stats = load_vla("tiny-maniskill").config.norm_stats
    baseline = held_out_metrics(untrained, samples)
    assert trained["eval/action_loss"] < 0.5 * baseline["eval/action_loss"]
    assert trained["eval/token_accuracy"] > 0.5
