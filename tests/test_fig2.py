"""The Fig. 2 benchmark's smoke run (simulator): one row per method and sparsity, markdown, PNG, cached rerun."""

from __future__ import annotations

import json

import pytest
from benchmark_runner import ROOT, run_smoke

COLUMNS = ["method", "ratio", "ind_sr", "ood_sr", "mean_sr", "params", "param_fraction", "memory_mb"]
METHODS = ["llm_pruner", "flap"]


@pytest.mark.sim
@pytest.mark.slow
def test_fig2_smoke(tmp_path):
    pytest.importorskip("mani_skill")
    out = tmp_path / "fig2"
    done = run_smoke("fig2.py", out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads((out / "fig2.json").read_text())
    assert {"machine", "versions", "settings", "rows"} <= set(result)
    assert {"platform", "cpu_count", "torch_threads", "date"} <= set(result["machine"])
    assert result["versions"]["torch"] and result["versions"]["python"]
    assert result["columns"] == COLUMNS and result["suite"] == "maniskill"
    ratios = [0.0, *result["settings"]["ratios"]]
    assert ratios == [0.0, 0.5, 0.9]
    assert [(r["method"], r["ratio"]) for r in result["rows"]] == [(m, q) for m in METHODS for q in ratios]
    for r in result["rows"]:
        assert all(r[c] is not None for c in COLUMNS), r
        assert 0.0 <= r["ind_sr"] <= 100.0 and 0.0 <= r["ood_sr"] <= 100.0
        assert r["key"] == ("dense" if r["ratio"] == 0 else f"{r['method']}{round(r['ratio'] * 100):02d}")
    for method in METHODS:  # pruning more removes more parameters
        params = [r["params"] for r in result["rows"] if r["method"] == method]
        assert params[0] > params[1] > params[2], (method, params)
        assert [r["param_fraction"] for r in result["rows"] if r["method"] == method][0] == 1.0
    markdown = (out / "fig2.md").read_text()
    assert "success vs sparsity" in markdown and "LLM-Pruner (block, Taylor)" in markdown and "FLAP" in markdown
    assert markdown.count("\n| ") >= 1 + len(result["rows"])  # header + one line per point
    data = (out / "fig2.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000

    again = run_smoke("fig2.py", out)
    assert again.returncode == 0 and "cached" in again.stdout and "running" not in again.stdout
    assert json.loads((out / "fig2.json").read_text())["rows"] == result["rows"]


def test_fig2_rejects_bad_ratios(tmp_path):
    done = run_smoke("fig2.py", tmp_path / "f2", "--ratios", "0.5", "1.0")
    assert done.returncode == 2 and "--ratios" in done.stderr


def test_benchmarks_refuse_to_evaluate_on_the_layouts_of_their_own_demos(tmp_path, monkeypatch):
    done = run_smoke("fig2.py", tmp_path / "f2", "--seed", "3", "--eval-seed", "3")
    assert done.returncode == 2 and "--eval-seed (3) must differ from --seed" in done.stderr
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import fig2

    assert fig2.parse_args(["--output-dir", str(tmp_path)]).eval_seed == 1  # EVAL_SEED, not the demos' seed 0
