"""The action floor (`vla_compress.evaluation.roofline`) and `benchmarks/speed.py` that reports against it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vla_compress import load_vla, prune, quantize
from vla_compress.evaluation import profile
from vla_compress.evaluation.roofline import (
    DECODE_STEPS,
    MachineRates,
    action_cost,
    measure_rates,
    weight_bytes_read,
)
from vla_compress.modeling.size import module_size

ROOT = Path(__file__).resolve().parents[1]


def test_action_cost_counts_the_prefill_and_every_decode_step():
    model = load_vla("tiny", dtype="float32", seed=0)
    cost = action_cost(model)
    lm = model.language_model
    decoder_params = sum(p.numel() for p in lm.model.layers.parameters())
    # every decoder weight multiplies every prefill token (2 FLOPs), and once per decode step
    assert cost.flops > 2 * decoder_params * (cost.prefill_tokens + DECODE_STEPS)
    assert cost.prefill_tokens > 64  # BOS + 64 patches + the instruction
    decoder_bytes = module_size(lm.model).bytes - module_size(lm.get_input_embeddings()).bytes
    assert cost.bytes_read > (1 + DECODE_STEPS) * decoder_bytes
    # the output head reads only its 256 action rows (of 576), not the whole vocabulary
    config = lm.config
    kv_per_position = 2 * config.num_hidden_layers * config.hidden_size * 4  # keys and values, float32
    kv_bound = kv_per_position * (cost.prefill_tokens + DECODE_STEPS) * DECODE_STEPS
    full_head = (1 + DECODE_STEPS) * module_size(lm.lm_head).bytes
    rest = module_size(model.vision_backbone).bytes + module_size(model.projector).bytes + kv_bound
    assert cost.bytes_read < (1 + DECODE_STEPS) * decoder_bytes + full_head * 256 / 576 + rest + 2**16
    assert cost.bytes_read > (1 + DECODE_STEPS) * decoder_bytes + full_head * 256 / 576

    pruned = action_cost(prune(load_vla("tiny", dtype="float32", seed=0), ratio=0.9, importance="l2"))
    assert pruned.flops < 0.6 * cost.flops and pruned.bytes_read < 0.6 * cost.bytes_read
    rates = MachineRates("cpu", "float32", bytes_per_second=1e10, flops_per_second=1e11)
    assert cost.floor_seconds(rates) == pytest.approx(cost.bytes_read / 1e10 + cost.flops / 1e11)


def test_quanto_int4_reads_fewer_bytes_and_profiles():
    model = quantize(load_vla("tiny", dtype="float32", seed=0), bits=4, method="quanto")
    dense = action_cost(load_vla("tiny", dtype="float32", seed=0))
    assert action_cost(model).bytes_read < 0.4 * dense.bytes_read
    # recounted without a forward pass, from the unquantized count's token numbers
    assert weight_bytes_read(model, dense.prompt_tokens, dense.prefill_tokens) == action_cost(model).bytes_read
    with pytest.raises(ValueError, match="prefill_tokens"):
        weight_bytes_read(model, dense.prompt_tokens, 0)
    with pytest.raises(ValueError, match="must be >= prompt_tokens"):
        weight_bytes_read(model, 10, 5)
    result = profile(model, batch_size=1, warmup=0, iters=1)  # inference_mode broke quanto int4 here
    assert result.latency_ms_median > 0


def test_measure_rates_are_positive_and_checked():
    rates = measure_rates("cpu", torch.float32, buffer_bytes=8 * 2**20, matmul_size=256, repeats=1)
    assert rates.bytes_per_second > 1e8 and rates.flops_per_second > 1e8
    with pytest.raises(ValueError, match="buffer_bytes"):
        measure_rates("cpu", buffer_bytes=10)
    with pytest.raises(ValueError, match="matmul_size"):
        measure_rates("cpu", matmul_size=0)


def test_speed_benchmark_reports_floors_and_targets(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--models", "tiny", "--rows", "dense", "rlrc",
               "rlrc_4bit", "vla_cache", "--iters", "1", "--warmup", "0", "--batch-size", "2",
               "--output-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "speed.json").read_text())
    assert result["low_bit"] == "aten" and result["rates"]["bytes_per_second"] > 0
    rows = {r["key"]: r for r in result["models"][0]["rows"]}
    assert "error" not in rows["rlrc_4bit"], rows["rlrc_4bit"]
    for r in rows.values():
        assert r["floor_ms"] == pytest.approx(r["floor_ms_bytes"] + r["floor_ms_flops"])
        assert r["latency_vs_floor"] == pytest.approx(r["latency_ms"] / r["floor_ms"])
    assert rows["rlrc_4bit"]["flops"] == rows["rlrc"]["flops"]  # same shapes, counted before quantizing
    assert rows["vla_cache"]["flops"] == rows["dense"]["flops"] and 0 <= rows["vla_cache"]["reused_fraction"] <= 1
    assert rows["rlrc_4bit"]["bytes_read"] < rows["rlrc"]["bytes_read"] < rows["dense"]["bytes_read"]
    targets = {t["target"]: t for t in result["models"][0]["targets"]}
    assert len(targets) == 4 and all(t["met"] in (True, False) for t in targets.values())
    assert "x floor" in (tmp_path / "speed.md").read_text()


def test_speed_benchmark_rejects_bad_arguments(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--iters", "0", "--output-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "--iters must be >= 1" in done.stderr
