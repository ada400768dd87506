"""`vla-compress rlrc` / `run_rlrc`: the whole pipeline end to end at smoke size, resume, and bad input."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import h5py
import pytest
from test_cli import write_demos
from typer.testing import CliRunner

from vla_compress import load_vla
from vla_compress.cli import app
from vla_compress.envs import TASKS_IND, TASKS_OOD
from vla_compress.pipeline import RLRCConfig, RLRCReport, StageResult, config_from_yaml

runner = CliRunner()
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
# Smoke size: one demo episode, 1 IND + 1 OOD task of 8 steps, 2 SFT steps, no PPO; numbers meaningless.
SMOKE_YAML = """\
demo_tasks: [red_cube_on_blue_plate]
demo_episodes: 1
calibration_samples: 4
profile_batch: 2
profile_iters: 2
sft: {batch_size: 2, warmup_steps: 1}
"""


def smoke_args(out: Path, config: Path) -> list[str]:
    bits = "4" if HAS_BNB else "16"
    return ["rlrc", "tiny-maniskill", "-o", str(out), "--config", str(config), "--tasks",
            f"{TASKS_IND[0]},{TASKS_OOD[0]}", "--episodes", "1", "--episode-steps", "8", "--sft-steps", "2",
            "--bits", bits]


@pytest.mark.sim
@pytest.mark.slow
def test_rlrc_end_to_end_then_resume(tmp_path):
    pytest.importorskip("mani_skill")
    config, out = tmp_path / "smoke.yaml", tmp_path / "rlrc"
    config.write_text(SMOKE_YAML)
    result = runner.invoke(app, smoke_args(out, config))
    assert result.exit_code == 0, result.output
    stages = ["dense", "pruned", "sft", *(["4bit"] if HAS_BNB else [])]

    report = json.loads((out / "rlrc.json").read_text())
    assert [s["name"] for s in report["stages"]] == stages
    for stage in report["stages"]:
        assert stage["ind_episodes"] == 1 and stage["ood_episodes"] == 1
        low, high = stage["ind_interval"]
        assert 0.0 <= low <= high <= 1.0 and stage["params"] > 0 and stage["latency_ms"] > 0
    dense, pruned = report["stages"][0], report["stages"][1]
    assert pruned["params"] < dense["params"] and report["demos"]["generated"]
    if HAS_BNB:
        assert report["stages"][-1]["model_bytes"] < pruned["model_bytes"]
    markdown = (out / "rlrc.md").read_text()
    assert "| stage | IND success %" in markdown and "1 of 16 IND and 1 of 9 OOD tasks" in markdown
    assert (out / "rlrc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(0/1)" in result.output or "(1/1)" in result.output  # the table is printed
    assert (out / "dense" / "stage.json").is_file() and not (out / "dense" / "config.json").exists()
    for stage in stages[1:]:
        assert (out / stage / "stage.json").is_file() and (out / stage / "model.safetensors").is_file()
    assert load_vla(out / "pruned").config.llm_layer_widths and (out / "runs" / "sft").is_dir()

    written = {stage: (out / stage / "stage.json").stat().st_mtime_ns for stage in stages}
    again = runner.invoke(app, smoke_args(out, config))
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped") == len(stages) + 1  # every stage and the demos
    assert "generating" not in again.output and "sft: 100%" not in again.output
    assert {stage: (out / stage / "stage.json").stat().st_mtime_ns for stage in stages} == written

    # a stage saved but not yet measured (interrupted) is measured again, not retrained
    weights = (out / "sft" / "model.safetensors").read_bytes()
    (out / "sft" / "stage.json").unlink()
    again = runner.invoke(app, smoke_args(out, config))
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped") == len(stages) and "sft: 100%" not in again.output
    assert (out / "sft" / "stage.json").is_file() and (out / "sft" / "model.safetensors").read_bytes() == weights

    # another setting into the same directory is refused
    other = runner.invoke(app, [*smoke_args(out, config), "--ratio", "0.5"])
    assert other.exit_code == 2 and "differing: ratio" in other.output


def bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    """(arguments after `rlrc`, the argument the one-line error names)."""
    (tmp / "a_file").write_text("")
    (tmp / "empty").mkdir()
    (tmp / "no_episodes").mkdir()
    h5py.File(tmp / "no_episodes" / "red_cube_on_blue_plate.hdf5", "w").close()
    out = str(tmp / "unused")
    return [
        (["no-such-model", "-o", out], "name_or_path"),
        (["tiny", "-o", out, "--ratio", "1.5"], "ratio"),
        (["tiny", "-o", out, "--ratio", "0"], "ratio"),
        (["tiny", "-o", out, "--bits", "3"], "bits"),
        (["tiny", "-o", str(tmp / "a_file")], "output_dir"),
        (["tiny", "-o", str(tmp / "a_file" / "out")], "output_dir"),
        (["tiny", "-o", out, "--demos", str(tmp / "missing")], "demos"),
        (["tiny", "-o", out, "--demos", str(tmp / "empty")], "demos"),
        (["tiny", "-o", out, "--demos", str(tmp / "no_episodes")], "demos"),
        (["tiny", "-o", out, "--episodes", "0"], "episodes"),
    ]


@pytest.mark.parametrize("case", range(10))
def test_bad_input_exits_2_with_one_line_before_any_work(case, tmp_path):
    args, argument = bad_inputs(tmp_path)[case]
    if argument == "name_or_path":
        pytest.importorskip("mani_skill")  # checked before the model is loaded
    result = runner.invoke(app, ["rlrc", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and argument in lines[0], result.output
    assert not (tmp_path / "unused").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_parent_exits_2(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = runner.invoke(app, ["rlrc", "tiny", "-o", str(locked / "out")])
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 2 and "output_dir" in result.output and "not writable" in result.output


def test_yaml_reads_recover_sections_and_flags_override(tmp_path):
    demos = write_demos(tmp_path / "demos")
    path = tmp_path / "rlrc.yaml"
    path.write_text(f"ratio: 0.5\nepisodes: 3\nsft: {{data: {demos}, steps: 40, batch_size: 4}}\n"
                    "rl: {total_env_steps: 240, num_envs: 2}\n")
    config = config_from_yaml(path, episodes=1, bits=None)
    assert (config.ratio, config.episodes, config.bits, config.sft_steps, config.ppo_steps) == (0.5, 1, 4, 40, 240)
    assert config.demos == str(demos) and config.sft == {"batch_size": 4} and config.rl == {"num_envs": 2}
    assert config.sft_config(data=[{}], output_dir=tmp_path / "sft").batch_size == 4
    assert config.ppo_config(tmp_path / "ppo").num_envs == 2

    path.write_text("ratioo: 0.5\n")
    with pytest.raises(ValueError, match="ratioo"):
        config_from_yaml(path)
    path.write_text("sft: {output_dir: elsewhere}\n")
    with pytest.raises(ValueError, match="sft.output_dir"):
        config_from_yaml(path).validate(tmp_path)
    path.write_text("rl: {num_envz: 2}\n")
    with pytest.raises(ValueError, match="num_envz"):
        config_from_yaml(path, ppo_steps=120).validate(tmp_path)


def test_evaluation_layouts_are_not_the_generated_demos(tmp_path):
    assert RLRCConfig().eval_seed == 1 != RLRCConfig().seed
    with pytest.raises(ValueError, match=r"eval_seed \(3\) must differ from seed"):
        RLRCConfig(seed=3, eval_seed=3).validate(tmp_path)
    RLRCConfig(seed=3, eval_seed=3, demos=tmp_path).validate(tmp_path)  # demos brought from elsewhere


def test_tasks_per_split_takes_the_first_of_each_split():
    config = RLRCConfig(tasks_per_split=2)
    assert config.eval_tasks() == [*TASKS_IND[:2], *TASKS_OOD[:2]]
    assert RLRCConfig(tasks="ood", tasks_per_split=3).eval_tasks() == list(TASKS_OOD[:3])


def test_report_table_has_wilson_intervals_and_ratios():
    def stage(name: str, successes: int, params: int, size: int, ms: float) -> StageResult:
        return StageResult(name=name, label=name, path=None, ind_successes=successes, ind_episodes=10,
                           ood_successes=0, ood_episodes=5, params=params, model_bytes=size, latency_ms=ms,
                           actions_per_s=1000 / ms, profile_batch=8, seconds={})

    machine = {"device": "cpu", "dtype": "as stored", "cpu_count": 2, "torch_threads": 1, "cuda": None}
    report = RLRCReport(model="tiny", config=RLRCConfig(tasks_per_split=4).to_dict(),
                        tasks=[*TASKS_IND[:4], *TASKS_OOD[:4]],
                        stages=[stage("dense", 2, 4_000_000, 20_000_000, 20.0), stage("pruned", 1, 2_000_000,
                                                                                      10_000_000, 10.0)],
                        demos={"episodes": 32}, seconds=60.0, machine=machine)
    markdown = report.markdown()
    assert "20.0 [5.7, 51.0] (2/10)" in markdown and "0.0 [0.0, 43.4] (0/5)" in markdown
    assert "10.0 (×0.50)" in markdown and "2.00 M (×0.50)" in markdown
    assert "4 of 16 IND and 4 of 9 OOD tasks (the first 4 of each split)" in markdown
    assert json.loads(json.dumps(report.to_dict()))["stages"][0]["ind_rate"] == 0.2
