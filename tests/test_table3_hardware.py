"""`benchmarks/table3_hardware.py` (Table III's hardware columns, no simulator) and the 7B preset it profiles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vla_compress.modeling import build_model, preset_config
from vla_compress.modeling.loading import _built_on

ROOT = Path(__file__).resolve().parents[1]


def test_table3_hardware_rows_on_tiny(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "table3_hardware.py"), "--model", "tiny", "--device", "cpu",
               "--dtype", "float32", "--iters", "2", "--warmup", "1", "--batch-size", "2", "--round-to", "8",
               "--output-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "table3_hardware.json").read_text())
    rows = {r["key"]: r for r in result["rows"]}
    assert list(rows) == ["dense", "vla_cache", "dense_8bit", "dense_4bit", "llm_pruner20", "rlrc", "rlrc_4bit"]
    assert rows["vla_cache"]["memory_gb"] == rows["dense"]["memory_gb"]  # the dense weights, plus a cache
    assert "episode frames" in rows["vla_cache"]["inputs"] and 0 <= rows["vla_cache"]["reused_fraction"] <= 1
    assert rows["dense"]["memory_gb_vs_dense"] == 1.0
    # pruning and quantization shrink the stored bytes, in the expected order
    assert rows["rlrc_4bit"]["memory_gb"] < rows["rlrc"]["memory_gb"] < rows["llm_pruner20"]["memory_gb"]
    assert rows["llm_pruner20"]["memory_gb"] < rows["dense"]["memory_gb"]
    assert rows["dense_4bit"]["memory_gb"] < rows["dense_8bit"]["memory_gb"] < rows["dense"]["memory_gb"]
    assert all(r["latency_ms"] > 0 and r["throughput"] > 0 for r in rows.values())
    assert result["settings"]["round_to"] == 8 and "RLRC-4bit" in (tmp_path / "table3_hardware.md").read_text()
    assert (tmp_path / "table3_hardware.md").read_text() in done.stdout  # main() prints the report it wrote


def test_openvla_7b_preset_builds_with_a_processor_without_host_memory():
    with _built_on("meta", torch.bfloat16):
        model = build_model(preset_config("openvla-7b"))
    assert torch.get_default_dtype() == torch.float32  # restored
    params = sum(p.numel() for p in model.parameters())
    assert 7.4e9 < params < 7.7e9 and next(model.parameters()).dtype == torch.bfloat16
    ids = model.processor.prompt_ids("put the red cube on the blue plate")
    assert ids[0] == 1 and max(ids) < 32000 - 256  # words below the 256 action tokens
    assert model.processor.action_tokenizer.vocab_end == 32000


def test_table3_hardware_rejects_bad_flags(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "table3_hardware.py"), "--model", "tiny", "--iters", "0",
               "--output-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "--iters must be >= 1" in done.stderr


@pytest.mark.parametrize("flag, value, message", [
    ("--env-steps", "0", "--env-steps must be >= 1"),
    ("--num-envs", "0", "--num-envs must be >= 1"),
    ("--lr", "0", "--lr must be > 0"),
    ("--critic-warmup", "-1", "--critic-warmup must be >= 0"),
    ("--first-grasp-bonus", "-1", "--first-grasp-bonus must be >= 0"),
    ("--group-size", "0", "--group-size must be >= 1"),
    ("--curve-every", "-1", "--curve-every must be >= 0"),
    ("--eval-tasks", "green_cube_on_pink_plate", "--tasks / --eval-tasks:"),
])
def test_ppo_tasks_rejects_bad_flags(flag, value, message):
    command = [sys.executable, str(ROOT / "benchmarks" / "ppo_tasks.py"), "--model", "tiny", flag, value]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and message in done.stderr


def test_ppo_tasks_shuffled_advantages_permute_gae_and_keep_returns(monkeypatch):
    """The control estimator permutes GAE's advantages and leaves the critic's returns and compute_gae alone."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import ppo_tasks

    from vla_compress.recovery import ppo
    from vla_compress.recovery.rollout import RolloutBuffer

    buffer = RolloutBuffer.allocate(3, 2, (4, 4, 3))
    buffer.rewards = torch.arange(6.0).view(3, 2)
    config = ppo.PPOConfig(gamma=0.0, gae_lambda=0.0)
    plain, returns, _ = ppo.gae_estimate(buffer, {}, config)
    shuffled, shuffled_returns, _ = ppo_tasks.shuffled_advantages("gae", seed=0)(buffer, {}, config)
    assert not torch.equal(shuffled, plain) and torch.equal(shuffled.flatten().sort().values, plain.flatten())
    assert torch.equal(shuffled_returns, returns)  # the critic still learns the true returns
    assert torch.equal(ppo.gae_estimate(buffer, {}, config)[0], plain)  # nothing patched


def test_ppo_tasks_first_grasp_bonus_pays_once_per_episode(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gymnasium as gym
    import numpy as np
    import ppo_tasks

    class GraspEnv(gym.Env):
        """Reward 0; grasped on steps 2, 3 and 5 of each episode (released on step 4)."""

        observation_space = gym.spaces.Box(0, 1, (1,))
        action_space = gym.spaces.Box(-1, 1, (7,))

        def reset(self, *, seed=None, options=None):
            self.t = 0
            return np.zeros(1, np.float32), {"is_grasped": False}

        def step(self, action):
            self.t += 1
            return np.zeros(1, np.float32), 0.0, False, False, {"is_grasped": self.t in (2, 3, 5)}

    envs = ppo_tasks.FirstGraspBonus(gym.vector.SyncVectorEnv([GraspEnv, GraspEnv]), bonus=0.5)
    for _ in range(2):  # the bonus comes back after a reset
        envs.reset(seed=0)
        rewards = [envs.step(np.zeros((2, 7)))[1] for _ in range(6)]
        assert np.array_equal(np.stack(rewards)[:, 0], [0.0, 0.5, 0.0, 0.0, 0.0, 0.0])


@pytest.mark.sim
@pytest.mark.slow
def test_ppo_tasks_trains_on_one_split_and_compares_both_with_a_curve(tmp_path):
    pytest.importorskip("mani_skill")
    from vla_compress.envs import TASKS_IND, TASKS_OOD

    command = [sys.executable, str(ROOT / "benchmarks" / "ppo_tasks.py"), "--model", "tiny", "--tasks", TASKS_IND[0],
               "--eval-tasks", TASKS_IND[0], TASKS_OOD[0], "--episodes", "1", "--env-steps", "120",
               "--curve-every", "1", "--output-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    for stage in ("before", "after"):
        splits = result[stage]["splits"]
        assert [splits[s]["episodes"] for s in ("ind", "ood")] == [1, 1] and set(result[stage]["per_task"]) == {
            TASKS_IND[0], TASKS_OOD[0]}
        assert 0 <= splits["ind"]["wilson95"][0] <= splits["ind"]["wilson95"][1] <= 1
    assert set(result["change"]) == {"ind", "ood"} and all(0 <= c["p"] <= 1 for c in result["change"].values())
    metrics = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    curve = [m for m in metrics if "eval/ood_success_rate" in m]  # the one update's greedy point, both splits
    assert len(curve) == 1 and "eval/ind_success_rate" in curve[0]
    assert (tmp_path / "ppo_curve.png").stat().st_size > 0 and (tmp_path / "ppo_rollouts.png").stat().st_size > 0
