"""The Table II / Figs. 2 and 4 benchmark's smoke run (simulator): rows, sweep points, PNGs, cached rerun."""

from __future__ import annotations

import json

import pytest
from benchmark_runner import run_smoke

ROW_KEYS = ["llm_pruner90_sft", "llm_pruner90_sft_int8", "llm_pruner90_sft_nf4"]
COLUMNS = ["ind_sr", "ood_sr", "memory_mb", "inference_ms", "throughput"]
FIGURES = ("fig2_success_vs_sparsity.png", "fig4_throughput_vs_sparsity.png")


@pytest.mark.sim
@pytest.mark.slow
def test_table2_smoke(tmp_path):
    pytest.importorskip("mani_skill")
    out = tmp_path / "table2"
    done = run_smoke("table2.py", out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads((out / "table2.json").read_text())
    assert [r["key"] for r in result["rows"]] == ROW_KEYS
    for r in result["rows"]:
        assert all(r.get(c) is not None for c in COLUMNS), r
    memory = [r["memory_mb"] for r in result["rows"]]
    assert memory[0] > memory[1] > memory[2]  # 8-bit and 4-bit shrink the pruned model
    ratios = [0.0, *result["settings"]["ratios"]]
    assert set(result["fig2"]) == {"llm_pruner", "flap"}
    for points in result["fig2"].values():
        assert [q["ratio"] for q in points] == ratios
        assert all(q["ind_sr"] is not None and q["ood_sr"] is not None for q in points)
    for name in ("fp", "nf4"):
        assert [q["ratio"] for q in result["fig4"][name]] == ratios
        assert all(q["throughput"] > 0 for q in result["fig4"][name])
    assert {"platform", "cpu_count", "torch_threads", "date"} <= set(result["machine"])
    markdown = (out / "table2.md").read_text()
    assert "paper's Table II" in markdown and "79.6" in markdown and "Fig. 2 data" in markdown
    for figure in FIGURES:
        data = (out / figure).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000

    again = run_smoke("table2.py", out)
    assert again.returncode == 0 and "cached" in again.stdout and "running" not in again.stdout


def test_table2_rejects_bad_ratios(tmp_path):
    done = run_smoke("table2.py", tmp_path / "t2", "--ratios", "0.5", "1.0")
    assert done.returncode == 2 and "--ratios" in done.stderr
