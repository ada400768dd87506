"""The `vla-compress` command line: outputs, reloadable checkpoints, exit code 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import vla_compress.recovery
from vla_compress import load_vla
from vla_compress.cli import app
from vla_compress.data import DemoDataset

runner = CliRunner()
COMMANDS = ["info", "prune", "quantize", "recover", "evaluate", "profile", "demos", "dagger", "rlrc"]


def write_demos(path: Path, episodes: int = 2, steps: int = 3, image_size: int = 32) -> Path:
    """A demo directory in `generate_demos`' layout with random frames (no simulator)."""
    rng = np.random.default_rng(0)
    path.mkdir(parents=True, exist_ok=True)
    with h5py.File(path / "red_cube_on_blue_plate.hdf5", "w") as f:
        for k in range(episodes):
            group = f.create_group(f"episode_{k:05d}")
            group.create_dataset(
                "rgb", data=rng.integers(0, 256, (steps, image_size, image_size, 3), dtype=np.uint8)
            )
            group.create_dataset("actions", data=rng.uniform(-1, 1, (steps, 7)).astype(np.float32))
            group.create_dataset("proprio", data=rng.normal(size=(steps, 9)).astype(np.float32))
            group.attrs.update(
                task="red_cube_on_blue_plate", instruction="put the red cube on the blue plate"
            )
    return path


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "pruned"
    result = runner.invoke(
        app, ["prune", "tiny", "--ratio", "0.5", "--importance", "l2", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    return out


def test_info_prints_components():
    result = runner.invoke(app, ["info", "tiny"])
    assert result.exit_code == 0, result.output
    for name in ("vision_backbone", "projector", "language_model", "lm_head", "total"):
        assert name in result.output
    assert "pruning: dense" in result.output and "quantization: none" in result.output


def test_info_openvla_7b_on_meta_device():
    result = runner.invoke(app, ["info", "openvla-7b", "--device", "meta", "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    assert "7,541,237,184" in result.output


def test_prune_writes_a_loadable_checkpoint(pruned_dir):
    model = load_vla(pruned_dir)
    assert model.config.llm_layer_widths[1]["num_attention_heads"] == 4
    assert (pruned_dir / "prune_report.json").is_file()
    result = runner.invoke(app, ["info", str(pruned_dir)])
    assert result.exit_code == 0 and "per-layer widths" in result.output


def test_prune_taylor_with_demo_calibration(tmp_path):
    demos = write_demos(tmp_path / "demos")
    out = tmp_path / "taylor"
    result = runner.invoke(
        app,
        [
            "prune",
            "tiny",
            "--ratio",
            "0.5",
            "--importance",
            "taylor",
            "--calibration",
            str(demos),
            "--calibration-samples",
            "2",
            "--batch-size",
            "2",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert load_vla(out).config.llm_layer_widths[1]["num_attention_heads"] == 4


def test_quantize_a_pruned_checkpoint(pruned_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "q4"
    result = runner.invoke(
        app, ["quantize", str(pruned_dir), "--bits", "4", "--method", "bnb", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    model = load_vla(out)
    assert model.config.quantization["bits"] == 4
    shown = runner.invoke(app, ["info", str(out)]).output
    assert '"method": "bnb"' in shown and "per-layer widths" in shown
    images = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    assert model.predict_action(images, ["put the red cube on the blue plate"]).shape == (1, 7)


@pytest.mark.parametrize(
    "args, argument",
    [
        (["info", "no-such-preset"], "name_or_path"),
        (["prune", "tiny", "--ratio", "1.5", "--importance", "l2", "--output", "unused"], "ratio"),
        (["quantize", "tiny", "--bits", "3", "--output", "unused"], "bits"),
        (["prune", "tiny", "--ratio", "0.5", "--importance", "nope", "--output", "unused"], "importance"),
        (["info", "tiny", "--dtype", "int3"], "dtype"),
        (["evaluate", "tiny", "--suite", "libero_long", "--output", "unused"], "suite"),
        (["evaluate", "tiny", "--gripper-switch-after", "0", "--output", "unused"], "switch_after"),
        (["evaluate", "tiny", "--decode", "jit", "--output", "unused"], "decode"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, argument, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and argument in lines[0]
    assert "Traceback" not in result.output and not (tmp_path / "unused").exists()


def test_profile_writes_json(pruned_dir, tmp_path):
    out = tmp_path / "profile.json"
    result = runner.invoke(
        app,
        [
            "profile",
            str(pruned_dir),
            "--batch-size",
            "2",
            "--warmup",
            "0",
            "--iters",
            "1",
            "--image-size",
            "32",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["params"] > 0 and str(out) in result.output


def test_recover_builds_configs_from_yaml_and_flags(tmp_path, monkeypatch):
    demos = write_demos(tmp_path / "demos")
    config = tmp_path / "recover.yaml"
    config.write_text(
        f"sft: {{data: {demos}, steps: 50, batch_size: 2}}\nrl: {{total_env_steps: 1000, num_envs: 2}}\n"
    )
    seen = {}

    def fake_recover(model, sft=None, rl=None):
        seen.update(sft=sft, rl=rl)
        return model

    monkeypatch.setattr(vla_compress.recovery, "recover", fake_recover, raising=False)
    out = tmp_path / "recovered"
    result = runner.invoke(
        app,
        [
            "recover",
            "tiny",
            "--config",
            str(config),
            "--sft-steps",
            "3",
            "--rl-tasks",
            "ood",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (seen["sft"].steps, seen["sft"].batch_size, len(seen["sft"].data)) == (3, 2, 6)
    assert (seen["rl"].total_env_steps, seen["rl"].num_envs, seen["rl"].tasks) == (1000, 2, "ood")
    assert seen["rl"].output_dir == out / "runs" / "ppo"
    assert (out / "config.json").is_file()


def test_recover_trains_on_several_sft_data_directories(tmp_path, monkeypatch):
    from vla_compress.data import compute_norm_stats

    demos, dagger = write_demos(tmp_path / "demos", episodes=2), write_demos(tmp_path / "dagger", episodes=3)
    (demos / "norm_stats.json").write_text(json.dumps(compute_norm_stats(demos)))
    seen = {}
    monkeypatch.setattr(
        vla_compress.recovery, "recover", lambda model, sft=None, rl=None: seen.update(sft=sft) or model, raising=False
    )
    args = ["recover", "tiny", "--sft-data", str(demos), "--sft-data", str(dagger), "-o", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = seen["sft"].data
    assert (len(data), data.num_episodes) == (15, 5)  # 2 + 3 episodes of 3 steps, demos first
    assert data[0]["action"].tolist() == DemoDataset(demos)[0]["action"].tolist()
    assert data[14]["action"].tolist() == DemoDataset(dagger)[8]["action"].tolist()
    # the actions are tokenised with the demos' statistics (the base's), not those of the union
    assert data.norm_stats == compute_norm_stats(demos) != compute_norm_stats([demos, dagger])


def test_recover_runs_a_short_sft(tmp_path):
    demos = write_demos(tmp_path / "demos")
    out = tmp_path / "recovered"
    args = [
        "recover",
        "tiny",
        "--sft-data",
        str(demos),
        "--sft-steps",
        "1",
        "--sft-batch-size",
        "2",
        "-o",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert load_vla(out).config.norm_stats and (out / "runs" / "sft").is_dir()
    weights = (out / "model.safetensors").read_bytes()
    # the same command on another model must not resume (and return) the first run
    result = runner.invoke(app, [args[0], "tiny-maniskill", *args[2:]])
    assert result.exit_code == 2, result.output
    assert "holds checkpoints of a different run; differing: the starting model" in result.output
    assert (out / "model.safetensors").read_bytes() == weights


def test_recover_rejects_unknown_yaml_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(
        vla_compress.recovery, "recover", lambda model, sft=None, rl=None: model, raising=False
    )
    config = tmp_path / "recover.yaml"
    config.write_text("rl: {total_env_stepz: 10}\n")
    result = runner.invoke(app, ["recover", "tiny", "--config", str(config), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "total_env_stepz" in result.output


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and all(command in result.output for command in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_has_an_example(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and f"vla-compress {command}" in result.output


@pytest.mark.sim
def test_demos_and_evaluate_in_the_simulator(tmp_path):
    task, demos, out = "red_cube_on_blue_plate", tmp_path / "demos", tmp_path / "eval.json"
    result = runner.invoke(app, ["demos", str(demos), "--tasks", task, "--episodes-per-task", "1"])
    assert result.exit_code == 0, result.output
    assert (demos / "norm_stats.json").is_file() and str(demos) in result.output
    options = ["--tasks", task, "--episodes", "1", "--max-episode-steps", "2", "--image-size", "64", "-o", str(out),
               "--gripper-switch-after", "2"]
    result = runner.invoke(app, ["evaluate", "tiny", *options])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["success_rate"] == {task: 0.0}


@pytest.mark.sim
def test_dagger_labels_the_models_rollouts_with_the_expert(tmp_path):
    task, out = "red_cube_on_blue_plate", tmp_path / "dagger"
    result = runner.invoke(app, ["dagger", "tiny", str(out), "--tasks", task, "--episodes-per-task", "1",
                                 "--max-episode-steps", "3", "--image-size", "64", "--num-workers", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"][task]["episodes"] == 1 and summary["learner_success_rate"] == 0.0
    assert len(DemoDataset(out)) == 3  # the failed rollout is kept: one expert-labelled sample per step



@pytest.fixture
def bad_files(tmp_path, pruned_dir) -> Path:
    """The files the bad-input cases name, written into tmp_path."""
    import shutil

    (tmp_path / "list_config").mkdir()
    (tmp_path / "list_config" / "config.json").write_text("[1, 2]")
    shutil.copytree(pruned_dir, tmp_path / "mismatched")  # pruned weights beside a dense config.json
    config = json.loads((tmp_path / "mismatched" / "config.json").read_text())
    (tmp_path / "mismatched" / "config.json").write_text(json.dumps({**config, "llm_layer_widths": None}))
    (tmp_path / "malformed.yaml").write_text("sft: [1, 2\n")
    (tmp_path / "sft_list.yaml").write_text("sft: [1, 2]\n")
    (tmp_path / "a_file").write_text("not a directory")
    (tmp_path / "empty").mkdir()
    return tmp_path


PRUNE = ["prune", "tiny", "--ratio", "0.5", "--importance", "l2"]
# name -> (arguments, with {tmp} the bad_files directory; what the one-line error must say)
BAD_INPUT = {
    "list-shaped config.json": (["info", "{tmp}/list_config"], "config.json holds a list"),
    "weights not matching their config": (["info", "{tmp}/mismatched"], "does not match its config"),
    "device bogus": (["info", "tiny", "--device", "bogus"], "device='bogus' is unknown; allowed: cpu"),
    "device cuda without a GPU": (["info", "tiny", "--device", "cuda"], "allowed: cpu, meta (no CUDA device here)"),
    "prune device cuda without a GPU": ([*PRUNE, "--device", "cuda:0", "-o", "{tmp}/p"], "device='cuda:0'"),
    "recover malformed YAML": (["recover", "tiny", "--config", "{tmp}/malformed.yaml", "-o", "{tmp}/r"],
                               "malformed.yaml' is not valid YAML"),
    "recover sft list": (["recover", "tiny", "--config", "{tmp}/sft_list.yaml", "-o", "{tmp}/r"],
                         "sft is a list; allowed: a mapping of SFTConfig fields"),
    "rlrc malformed YAML": (["rlrc", "tiny", "--config", "{tmp}/malformed.yaml", "-o", "{tmp}/r"],
                            "is not valid YAML"),
    "rlrc sft list": (["rlrc", "tiny", "--config", "{tmp}/sft_list.yaml", "-o", "{tmp}/r"], "sft is a list"),
    "rlrc device bogus": (["rlrc", "tiny", "--device", "bogus", "-o", "{tmp}/r"], "device='bogus'"),
    "prune -o a file": ([*PRUNE, "-o", "{tmp}/a_file"], "a_file' exists and is not a directory"),
    "prune -o under a file": ([*PRUNE, "-o", "{tmp}/a_file/out"], "cannot be created"),
    "quantize -o a file": (["quantize", "tiny", "--bits", "8", "-o", "{tmp}/a_file"], "exists and is not a directory"),
    "recover -o a file": (["recover", "tiny", "--sft-data", "{tmp}/empty", "-o", "{tmp}/a_file"],
                          "exists and is not a directory"),
    "profile -o a directory": (["profile", "tiny", "-o", "{tmp}"], "is a directory; allowed: a file path"),
    "profile -o under a file": (["profile", "tiny", "-o", "{tmp}/a_file/p.json"], "p.json' cannot be written"),
    "evaluate -o a directory": (["evaluate", "tiny", "-o", "{tmp}"], "is a directory; allowed: a file path"),
    "demos into a file": (["demos", "{tmp}/a_file"], "exists and is not a directory"),
    "dagger into a file": (["dagger", "tiny", "{tmp}/a_file"], "exists and is not a directory"),
    "dagger expert mix above 1": (["dagger", "tiny", "{tmp}/d", "--expert-mix", "1.5"],
                                  "expert_mix must be in [0, 1], got 1.5"),
    "dagger unknown task": (["dagger", "tiny", "{tmp}/d", "--tasks", "red_cube_on_sky"], "red_cube_on_sky"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_files_devices_and_outputs_exit_2_before_any_work(case, bad_files, monkeypatch):
    """docs/cli.md: bad input exits with code 2 and one line, before a model is loaded or built."""
    import torch

    import vla_compress.cli
    import vla_compress.data

    args, message = BAD_INPUT[case]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # the same answer with or without a GPU
    monkeypatch.setattr(vla_compress.data, "generate_demos", lambda *a, **k: pytest.fail("demos ran"))
    if args[0] == "dagger" or ("-o" in args and "info" not in args):  # checks come first: no model is loaded
        monkeypatch.setattr(vla_compress.cli, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    result = runner.invoke(app, [arg.replace("{tmp}", str(bad_files)) for arg in args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not (bad_files / "p").exists() and not (bad_files / "r").exists()


def test_unwritable_output_exits_2_before_loading(tmp_path, monkeypatch):
    """A read-only parent (faked: root may write anywhere) is refused before the model is loaded."""
    import os

    import vla_compress.cli

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path and real_access(path, mode))
    monkeypatch.setattr(vla_compress.cli, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    for args in ([*PRUNE, "-o", str(tmp_path / "out")], ["quantize", "tiny", "-o", str(tmp_path / "out")],
                 ["profile", "tiny", "-o", str(tmp_path / "p.json")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "is not writable" in result.output and len(result.output.strip().splitlines()) == 1
