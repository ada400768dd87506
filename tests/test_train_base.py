"""`benchmarks/train_base.py`: the base-policy recipe end to end at smoke size, resume, and its losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_base  # noqa: E402

SMOKE = ["--episodes-per-task", "1", "--steps", "3", "--dagger-rounds", "1", "--dagger-episodes", "1",
         "--dagger-steps", "2", "--eval-episodes", "1", "--tasks-limit", "1", "--checkpoint-every", "2",
         "--warmup", "1", "--batch-size", "4", "--threads", "1", "--layouts-per-task", "2",
         "--gripper-switch-after", "2", "--no-ship"]


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--batch-size", "0"), ("--dagger-rounds", "-1"),
                                         ("--eval-episodes", "0"), ("--lr", "0"), ("--bin-sigma", "-1"),
                                         ("--gripper-weight", "-1"), ("--gripper-switch-after", "0")])
def test_bad_flags_exit_2_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_base.parse_args([flag, value])
    assert exit_info.value.code == 2
    assert flag.lstrip("-").split("-")[0] in capsys.readouterr().err


def test_steps_0_is_allowed_only_when_continuing_a_model():
    assert train_base.parse_args(["--init", "tiny-maniskill", "--steps", "0"]).steps == 0


def test_a_missing_init_model_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="name_or_path"):
        train_base.main(["--output-dir", str(tmp_path), "--init", str(tmp_path / "absent"), "--no-ship"])
    assert not (tmp_path / "demos").exists()


def test_init_heads_are_reloaded_when_saved_and_seeded_when_not(tmp_path):
    from safetensors.torch import save_file

    from vla_compress.modeling import build_model, preset_config

    build_model(preset_config("tiny", text_config={"num_hidden_layers": 2})).save_pretrained(tmp_path)
    fresh = [train_base.initial_model(str(tmp_path), seed=s)[1].state_dict() for s in (0, 0, 1)]
    assert all(torch.equal(fresh[0][k], fresh[1][k]) for k in fresh[0])
    assert not all(torch.equal(fresh[0][k], fresh[2][k]) for k in fresh[0])
    save_file(fresh[2], str(tmp_path / train_base.HEADS_FILE))
    reloaded = train_base.initial_model(str(tmp_path), seed=0)[1].state_dict()
    assert all(torch.equal(reloaded[k], fresh[2][k]) for k in fresh[2])


def test_smoothed_action_loss_is_lowest_at_the_target_and_orders_near_misses():
    target = torch.tensor([[100]])
    def loss_at(index: int) -> float:
        logits = torch.full((1, 1, 256), -10.0)
        logits[0, 0, index] = 10.0
        return train_base.smoothed_action_loss(logits, target, sigma=1.5).item()
    assert loss_at(100) < loss_at(101) < loss_at(103) < loss_at(140)


def test_gripper_weight_scales_only_the_gripper_tokens_share_of_the_action_loss():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 7, 256), torch.randint(0, 256, (4, 7))
    per_token = [train_base.smoothed_action_loss(logits[:, i:i + 1], target[:, i:i + 1], 1.5) for i in range(7)]
    plain = train_base.smoothed_action_loss(logits, target, 1.5)
    assert torch.allclose(plain, torch.stack(per_token).mean())
    weighted = train_base.smoothed_action_loss(logits, target, 1.5, gripper_weight=4.0)
    assert torch.allclose(weighted, (sum(per_token[:6]) + 4.0 * per_token[6]) / 7)


def test_aux_targets_add_the_offsets_the_expert_acts_on():
    import numpy as np

    state = np.arange(25, dtype=np.float32)[None]
    aux = train_base.aux_targets(state)
    assert aux.shape == (1, train_base.AUX_DIM)
    np.testing.assert_allclose(aux[0, :11], state[0, :11])  # physical state only: no keypoints or colours
    np.testing.assert_allclose(aux[0, 11:14], state[0, 3:6] - state[0, 0:3])  # cube - tcp


def test_dense_targets_peak_in_the_patch_of_each_object_in_its_colour_channel():
    # target cube red (0) at the top-left patch, other cube blue (2), target plate green (1) -> channel 6,
    # other plate red (0) -> channel 5, TCP -> channel 10; 4 x 4 grid
    keypoints = torch.tensor([[0.1, 0.1, 0.9, 0.1, 0.1, 0.9, 0.9, 0.9, 0.6, 0.4]])
    colours = torch.tensor([[0, 2, 1, 0]])
    target = train_base.dense_targets(keypoints, colours, grid=4).view(4, 4, -1)  # [v, u, channel]
    for (row, col), channel in (((0, 0), 0), ((0, 3), 2), ((3, 0), 6), ((3, 3), 5), ((1, 2), 10)):
        assert target[:, :, channel].argmax() == row * 4 + col
    assert target[:, :, [1, 3, 4, 7, 8, 9]].max() == 0  # colours no object has stay empty
    assert target.max() <= 1.0


def test_batch_moves_keypoints_with_the_image_shift():
    import numpy as np

    from vla_compress.modeling import build_model, preset_config

    model = build_model(preset_config("tiny-policy"))
    data = train_base.TrainSet(model, norm_stats={})
    size = model.processor.image_sizes[0]
    data.images = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    data.images[0, 40, 70] = 255  # one white pixel at (u, v) = (70.5, 40.5) / size
    data.keypoints = torch.tensor([[70.5, 40.5] * 5]) / size
    tokens = model.processor.tokenize(["put the red cube on the blue plate"], np.zeros((1, 7), np.float32))
    data.input_ids, data.attention_mask = tokens["input_ids"], tokens["attention_mask"]
    data.aux, data.colours = torch.zeros(1, train_base.AUX_DIM), torch.zeros(1, 4, dtype=torch.long)
    for seed in range(5):
        batch = data.batch(model, np.array([0]), np.random.default_rng(seed))
        image = batch["pixel_values"][0, 0]  # normalised channel 0: the white pixel is its maximum
        v, u = divmod(int(image.argmax()), size)
        assert torch.allclose(batch["keypoints"][0, :2] * size, torch.tensor([u + 0.5, v + 0.5]))
        words = batch["input_ids"][0, batch["colour_words"][0]]
        assert model.processor.tokenizer.convert_ids_to_tokens(words.tolist()) == ["red", "blue"]


@pytest.mark.sim
@pytest.mark.slow
def test_recipe_runs_every_stage_and_resumes_without_recomputing(tmp_path):
    env = {**os.environ, "MS_SKIP_ASSET_DOWNLOAD_PROMPT": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "train_base.py"), "--output-dir", str(tmp_path), *SMOKE]
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    card = json.loads((tmp_path / "final" / "model_card.json").read_text())
    assert set(card["stage_seconds"]) == {"demos", "layouts", "train_0", "dagger_1", "train_1", "eval"}
    assert card["success"]["ind"]["episodes"] == 1 and card["success"]["ood"]["episodes"] == 1
    low, high = card["success"]["ind"]["wilson95"]
    assert 0.0 <= low <= card["success"]["ind"]["rate"] <= high <= 1.0
    assert card["lm_parameters"] / card["parameters"] >= 0.6
    assert (tmp_path / "dagger_1" / "summary.json").exists()
    assert (tmp_path / "train_1" / "step_00000002").is_dir()

    from vla_compress import load_vla

    model = load_vla(tmp_path / "final")
    assert model.config.text_config.num_hidden_layers >= 8 and model.config.norm_stats

    probe = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "layout_probe.py"), str(tmp_path / "final"),
                            "--run-dir", str(tmp_path), "--per-task", "2", "--tasks-limit", "1"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout[probe.stdout.index("{"):])
    assert result["held_out_layouts"]["frames"] == result["training_layouts"]["frames"] == 2
    assert all(0.0 <= result["held_out_layouts"][f"sign_{a}"] <= 1.0 for a in "xy")
    task_file = next((tmp_path / "probe_2_1").glob("*.hdf5")).name
    with h5py.File(tmp_path / "probe_2_1" / task_file) as f:  # held-out: other layouts of the same task
        held_out_frame = f[sorted(f)[0]]["rgb"][0]
    with h5py.File(tmp_path / "layouts" / task_file) as f:
        assert not np.array_equal(held_out_frame, f[sorted(f)[0]]["rgb"][0])

    seconds = card["stage_seconds"]
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "final" / "model_card.json").read_text())
    assert again["stage_seconds"] == seconds  # every stage was cached: nothing ran twice
    assert again["success"] == card["success"]

    # a later session continues the model: no train_0, its heads reloaded, DAgger seeds not repeated
    assert (tmp_path / "final" / train_base.HEADS_FILE).exists()
    more = tmp_path / "more"
    continued = subprocess.run([*command[:2], "--output-dir", str(more), *SMOKE, "--init", str(tmp_path / "final"),
                                "--steps", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                               check=False)
    assert continued.returncode == 0, continued.stderr[-3000:]
    third = json.loads((more / "final" / "model_card.json").read_text())
    assert third["seeds"]["dagger"] == [train_base.DAGGER_SEED + 1, train_base.DAGGER_SEED + 2]
    assert (more / "dagger_2" / "summary.json").exists() and not (more / "dagger_1").exists()
    assert "train_0" not in third["stage_seconds"] and third["init"]["from"] == str(tmp_path / "final")
    assert third["lineage_hours"] > third["total_hours"]
