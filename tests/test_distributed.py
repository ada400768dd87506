"""SFT runs as 2 CPU processes (torchrun + gloo through accelerate) and keeps the replicas identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def test_sft_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               str(TESTS / "scripts" / "sft_two_processes.py"), str(tmp_path / "run"), str(TESTS)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REPLICAS_IDENTICAL" in result.stdout
    assert (tmp_path / "run" / "step_00000003" / "model.safetensors").exists()
