"""Runs a benchmark script's smoke preset in a subprocess (shared by the table tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_smoke(script: str, out: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python benchmarks/<script> --preset smoke --output-dir <out> <extra>`, output captured."""
    env = {**os.environ, "MS_SKIP_ASSET_DOWNLOAD_PROMPT": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / script), "--preset", "smoke", "--output-dir", str(out),
               *extra]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
