"""The Fig. 4 benchmark's smoke run (profiles only, no simulator): full-precision and 4-bit rows per sparsity."""

from __future__ import annotations

import json

import pytest
from benchmark_runner import run_smoke

COLUMNS = ["ratio", "precision", "throughput", "throughput_batch", "inference_ms", "memory_mb", "params", "speedup"]


@pytest.mark.slow
def test_fig4_smoke(tmp_path):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "fig4"
    done = run_smoke("fig4.py", out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "demos: generating" not in done.stdout and not (out / "demos").exists()  # data-free: no simulator, no demos

    result = json.loads((out / "fig4.json").read_text())
    assert {"machine", "versions", "settings", "rows"} <= set(result)
    assert {"platform", "cpu_count", "torch_threads", "date"} <= set(result["machine"])
    assert result["versions"]["torch"] and result["versions"]["bitsandbytes"]
    assert result["columns"] == COLUMNS and result["importance"] == "l2"
    ratios = [0.0, *result["settings"]["ratios"]]
    assert ratios == [0.0, 0.5, 0.9]
    rows = result["rows"]
    assert [(r["ratio"], r["precision"]) for r in rows] == [(q, p) for q in ratios for p in ("fp32", "4bit")]
    for r in rows:
        assert all(r[c] is not None for c in COLUMNS), r
        assert r["throughput"] > 0 and r["throughput_batch"] > 0 and r["inference_ms"] > 0
    full = [r for r in rows if r["precision"] == "fp32"]
    four = [r for r in rows if r["precision"] == "4bit"]
    assert full[0]["key"] == "dense" and full[0]["speedup"] == 1.0
    assert all(f["memory_mb"] > q["memory_mb"] for f, q in zip(full, four, strict=True))  # NF4 shrinks each
    assert full[0]["params"] > full[1]["params"] > full[2]["params"]  # pruning more removes more
    markdown = (out / "fig4.md").read_text()
    assert "throughput vs sparsity" in markdown and "4bit" in markdown and "fp32" in markdown
    assert markdown.count("\n| ") >= 1 + len(rows)
    data = (out / "fig4.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000

    again = run_smoke("fig4.py", out, timeout=300)
    assert again.returncode == 0 and "cached" in again.stdout and "running" not in again.stdout
    assert json.loads((out / "fig4.json").read_text())["rows"] == rows


def test_fig4_rejects_bad_arguments(tmp_path):
    done = run_smoke("fig4.py", tmp_path / "f4", "--ratios", "0")
    assert done.returncode == 2 and "--ratios" in done.stderr
    done = run_smoke("fig4.py", tmp_path / "f4", "--importance", "random")
    assert done.returncode == 2 and "--importance" in done.stderr
