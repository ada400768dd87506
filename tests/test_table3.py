"""`evaluation.profile` (fast, tiny model) and the Table III benchmark's smoke run (simulator)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from benchmark_runner import run_smoke

from vla_compress import component_sizes, load_vla
from vla_compress.evaluation import ProfileResult, profile

ROW_KEYS = ["dense", "vla_cache", "dense_4bit", "llm_pruner20", "rlrc", "rlrc_4bit"]
COLUMNS = ["ind_sr", "ood_sr", "memory_mb", "inference_ms", "throughput"]


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_vla("tiny")


def test_profile_fields_and_bytes(tiny):
    result = profile(tiny, batch_size=2, warmup=1, iters=3, image_size=64)
    assert isinstance(result, ProfileResult)
    data = json.loads(json.dumps(result.to_dict()))  # JSON-serialisable
    assert data["model_bytes"] == component_sizes(tiny)["total"].bytes
    assert data["params"] == component_sizes(tiny)["total"].params
    assert data["latency_ms_median"] > 0 and data["latency_ms_p90"] >= data["latency_ms_median"] * 0.999
    assert data["throughput_batch1"] > 0 and data["throughput_batch"] > 0
    assert len(data["latencies_ms"]) == 3 and data["batch_size"] == 2
    assert data["peak_memory_bytes"] > 0 and data["peak_memory_kind"] == "process_peak_rss"
    assert data["device"] == "cpu" and data["dtype"] == "float32"


@pytest.mark.parametrize("kwargs, name", [
    ({"batch_size": 0}, "batch_size"), ({"warmup": -1}, "warmup"), ({"iters": 0}, "iters"),
    ({"image_size": 0}, "image_size"), ({"seed": -1}, "seed"), ({"iters": 2.5}, "iters"),
    ({"device": "cuda"}, "device"), ({"device": "nonsense"}, "device"), ({"decode": "fast"}, "decode"),
])
def test_profile_rejects_bad_arguments(tiny, kwargs, name):
    with pytest.raises(ValueError, match=name):
        profile(tiny, **kwargs)


def test_profile_times_the_chosen_decode_path(tiny, monkeypatch):
    seen = []
    original = tiny.predict_action
    monkeypatch.setattr(tiny, "predict_action", lambda *a, **k: seen.append(k.get("decode")) or original(*a, **k))
    result = profile(tiny, batch_size=2, warmup=1, iters=2, image_size=64, decode="static")
    assert result.decode == "static" and seen == ["static"] * 6  # (1 warm-up + 2 timed) at batch 1 and 2


def test_profile_rejects_non_policy():
    with pytest.raises(ValueError, match="predict_action"):
        profile(torch.nn.Linear(2, 2))


@pytest.mark.sim
@pytest.mark.slow
def test_table3_smoke(tmp_path):
    pytest.importorskip("mani_skill")
    out = tmp_path / "table3"
    done = run_smoke("table3.py", out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    table = json.loads((out / "table3.json").read_text())
    assert [r["key"] for r in table["rows"]] == ROW_KEYS
    for r in table["rows"]:
        assert all(c in r and c in r["ratios"] for c in COLUMNS), r
        if r["status"] == "ok":
            assert all(r[c] is not None for c in COLUMNS), r
    dense = table["rows"][0]
    assert all(dense["ratios"][c] == 1.0 for c in COLUMNS)
    vla_cache = table["rows"][1]
    assert vla_cache["status"] == "ok" and "VLACachePolicy" in vla_cache["note"]
    assert "recorded demo episode" in vla_cache["note"]  # profiled on consecutive demo frames
    assert {"platform", "cpu_count", "torch_threads", "date"} <= set(table["machine"])
    assert set(table["stages"]) == {"dense", "pruned 90%", "+SFT", "+PPO"}
    assert [dense["success"][split]["episodes"] for split in ("ind", "ood")] == [1, 1]  # 1 episode of 1 task each
    markdown = (out / "table3.md").read_text()
    assert "RLRC-4bit" in markdown and "paper's Table III" in markdown and "89.06" in markdown
    assert re.search(r"\| (0\.0 \[0\.0, 79\.3\] \(0/1\)|100\.0 \[20\.7, 100\.0\] \(1/1\)) \|", markdown)  # Wilson
    for figure in ("fig9_stages.png", "fig8_curves.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = run_smoke("table3.py", out, timeout=300)
    assert again.returncode == 0 and "cached" in again.stdout and "running" not in again.stdout
