"""The Table I benchmark's smoke run (simulator): every row and column present, cached rerun."""

from __future__ import annotations

import json

import pytest
from benchmark_runner import run_smoke

ROW_KEYS = ["dense", "int8", "nf4", "magnitude20", "wanda20", "llm_pruner20", "flap20"]
COLUMNS = ["ind_sr", "ood_sr", "ind_sr_sft", "ood_sr_sft", "params", "memory_mb", "inference_ms", "throughput"]
PRUNED = {"magnitude20", "wanda20", "llm_pruner20", "flap20"}


@pytest.mark.sim
@pytest.mark.slow
def test_table1_smoke(tmp_path):
    pytest.importorskip("mani_skill")
    out = tmp_path / "table1"
    done = run_smoke("table1.py", out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads((out / "table1.json").read_text())
    assert [r["key"] for r in result["rows"]] == ROW_KEYS
    assert result["columns"] == COLUMNS
    for r in result["rows"]:
        after_sft = ("ind_sr_sft", "ood_sr_sft")
        for column in COLUMNS:
            assert column in r, (r["key"], column)
            if r["key"] in PRUNED or column not in after_sft:
                assert r[column] is not None, (r["key"], column)
            else:
                assert r[column] is None, (r["key"], column)
    rows = {r["key"]: r for r in result["rows"]}
    for key in ("magnitude20", "wanda20"):  # unstructured pruning stays sparse through SFT
        assert rows[key]["sparsity"] >= 0.19 and rows[key]["sparsity_sft"] >= 0.19, rows[key]
        assert rows[key]["params"] == rows["dense"]["params"]
    assert rows["llm_pruner20"]["params"] < rows["dense"]["params"]
    assert rows["flap20"]["params"] < rows["dense"]["params"]
    assert rows["nf4"]["memory_mb"] < rows["dense"]["memory_mb"]
    assert {"platform", "cpu_count", "torch_threads", "date"} <= set(result["machine"])
    assert result["suite"] == "maniskill" and "LIBERO" in result["suite_note"]
    markdown = (out / "table1.md").read_text()
    assert "FLAP 20%" in markdown and "paper's Table I" in markdown and "84.7" in markdown

    again = run_smoke("table1.py", out)
    assert again.returncode == 0 and "cached" in again.stdout and "running" not in again.stdout


def test_table1_libero_suite_needs_demos(tmp_path):
    done = run_smoke("table1.py", tmp_path / "t1", "--suite", "libero_spatial")
    assert done.returncode == 2 and "needs --demos DIR" in done.stderr and "LiberoDataset" in done.stderr
    done = run_smoke("table1.py", tmp_path / "t1", "--suite", "libero_long")
    assert done.returncode == 2 and "libero_10" in done.stderr  # argparse lists the allowed suites
