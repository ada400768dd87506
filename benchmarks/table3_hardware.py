"""Table III's hardware columns (memory, inference time, throughput) for the openvla-7b architecture.

Speed and memory do not depend on the weights' values, so this profiles the `openvla-7b` preset with
random weights (no download, no simulator) in the compression states of the paper's Table III:

- dense;  dense + 8-bit (LLM.int8) and + 4-bit (NF4);  LLM-Pruner 20% (block pruning, no recovery);
- RLRC: block pruning 90% (SFT and PPO change the values only, not the shapes);  RLRC-4bit: 90% + NF4.
- VLA-Cache: the dense model as `VLACachePolicy` (training-free KV reuse of static visual tokens), profiled
  on a synthetic episode instead of random frames (its speed depends on how much of each frame stays still).

Each row is built fresh (same seed), transformed, profiled by `vla_compress.evaluation.profile` (random
128 px frames, warm-up calls, then timed `predict_action` calls at batch 1 and at `--batch-size`) and
freed before the next, one after another in one process, so ratios are fair and peak memory is the
row's own. Block pruning removes the same fraction of every pruned layer whatever the criterion, so the
data-free `l2` importance gives LLM-Pruner's (Taylor) shapes.

    python benchmarks/table3_hardware.py --device cuda --dtype bfloat16 --round-to 128   # a GPU, openvla-7b
    python benchmarks/table3_hardware.py --model tiny --device cpu --dtype float32 --iters 5   # anywhere

Outputs in `--output-dir`: table3_hardware.json (machine, versions, settings, rows) and table3_hardware.md.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from report import fmt, machine, machine_line, ratio, report_main, table, versions, write_report

from vla_compress import VLACachePolicy, load_vla, prune, quantize
from vla_compress.evaluation import profile

# row key -> (method as in the paper's table, pruning ratio or None, quantization bits or None)
ROWS: dict[str, tuple[str, float | None, int | None]] = {
    "dense": ("dense base", None, None),
    "vla_cache": ("VLA-Cache (dense, synthetic episode)", None, None),
    "dense_8bit": ("dense + 8-bit (LLM.int8)", None, 8),
    "dense_4bit": ("dense + 4-bit (NF4)", None, 4),
    "llm_pruner20": ("LLM-Pruner 20% (no recovery)", 0.2, None),
    "rlrc": ("RLRC (block pruning 90%)", 0.9, None),
    "rlrc_4bit": ("RLRC-4bit (90% + NF4)", 0.9, 4),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="openvla-7b", help="a preset (random weights) or an OpenVLA directory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", help="weights and 4-bit compute dtype")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--batch-size", type=int, default=8, help="batch of the throughput column")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--round-to", type=int, default=None,
                        help="kept widths of the pruned rows are multiples of this (128 suits GPU kernels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/table3_hardware"))
    args = parser.parse_args(argv)
    for name in ("batch_size", "iters", "round_to"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def compress(model: torch.nn.Module, sparsity: float | None, bits: int | None, dtype: str,
             round_to: int | None = None, low_bit: str = "bnb") -> torch.nn.Module:
    """Block-prune `model` to `sparsity` (data-free l2: the same shapes as Taylor), then quantize its LM
    to `bits` with `low_bit` ("bnb": LLM.int8 / NF4; "quanto" or "aten": weight-only int8 / int4)."""
    if sparsity is not None:
        prune(model, ratio=sparsity, importance="l2", method="block", round_to=round_to)
    if bits is not None and low_bit in ("quanto", "aten"):
        quantize(model, bits=bits, method=low_bit)
    elif bits == 8:
        quantize(model, bits=8, method="bnb")
    elif bits == 4:
        quantize(model, bits=4, method="bnb", quant_type="nf4", compute_dtype=dtype)
    return model


def build_row(key: str, args: argparse.Namespace) -> tuple[torch.nn.Module, float]:
    """The model of row `key` on `args.device`, and the seconds its compression took."""
    _, sparsity, bits = ROWS[key]
    model = load_vla(args.model, device=args.device, dtype=args.dtype, seed=args.seed)
    start = time.perf_counter()
    compress(model, sparsity, bits, args.dtype, args.round_to)
    return model, time.perf_counter() - start


def moving_block_episode(seed: int, frames: int = 30, size: int = 128) -> dict:
    """Consecutive frames without a simulator, for the VLA-Cache row: a still random background and a
    24 px white block moving 3 px to the right per frame (a stand-in for the arm)."""
    images = np.repeat(np.random.default_rng(seed).integers(0, 256, (1, size, size, 3), dtype=np.uint8), frames, 0)
    for t in range(frames):
        images[t, 52:76, 8 + 3 * t:32 + 3 * t] = 255
    return {"images": images, "instruction": "put the red cube on the blue plate"}


def profile_row(model, key: str, args: argparse.Namespace, decode: str = "dynamic") -> dict[str, Any]:
    """`profile(...)` of one row as a dict: the "vla_cache" row wraps the model in `VLACachePolicy` (stateful:
    consecutive frames of `moving_block_episode`, its own dynamic decode), every other row is the model on
    random frames with `decode`."""
    options = {"batch_size": args.batch_size, "warmup": args.warmup, "iters": args.iters, "seed": args.seed}
    if key == "vla_cache":
        return profile(VLACachePolicy(model), episode=moving_block_episode(args.seed), **options).to_dict()
    return profile(model, decode=decode, **options).to_dict()


def release_memory() -> None:
    """Return freed memory (call after the caller dropped its last reference to a row's model)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run(args: argparse.Namespace) -> dict[str, Any]:
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for key in args.rows:
        print(f"[table3_hardware {time.strftime('%H:%M:%S')}] {key}: building", flush=True)
        model = None
        try:
            model, seconds = build_row(key, args)
            prof = profile_row(model, key, args)
        except (RuntimeError, ValueError, ImportError) as error:  # report the row as not measured, go on
            print(f"  {key} failed: {error!r}", flush=True)
            rows.append({"key": key, "method": ROWS[key][0], "error": repr(error)})
            continue
        finally:  # the next row is built with this one gone
            del model
            release_memory()
        rows.append({"key": key, "method": ROWS[key][0], "memory_gb": prof["model_bytes"] / 1e9,
                     "peak_memory_gb": prof["peak_memory_bytes"] / 1e9, "peak_memory_kind": prof["peak_memory_kind"],
                     "latency_ms": prof["latency_ms_median"], "latency_ms_p90": prof["latency_ms_p90"],
                     "throughput": prof["throughput_batch1"], "throughput_batch": prof["throughput_batch"],
                     "params": prof["params"], "compress_seconds": seconds, "dtype": prof["dtype"]})
        if prof["policy_info"] is not None:  # VLA-Cache: what it was fed and how much it reused
            rows[-1].update(inputs=prof["inputs"], reused_fraction=prof["policy_info"]["reused_fraction"])
        print(f"  {rows[-1]['memory_gb']:.2f} GB, {rows[-1]['latency_ms']:.1f} ms, "
              f"{rows[-1]['throughput']:.1f} actions/s", flush=True)
    dense = next((r for r in rows if r["key"] == "dense" and "error" not in r), None)
    for r in rows:
        if "error" in r:
            continue
        for column in ("memory_gb", "latency_ms", "throughput", "throughput_batch"):
            r[f"{column}_vs_dense"] = ratio(r[column], dense[column]) if dense else None
    result = {"model": args.model, "device": args.device, "dtype": args.dtype, "machine": machine(),
              "versions": versions(), "settings": {"batch_size": args.batch_size, "warmup": args.warmup,
                                                   "iters": args.iters, "seed": args.seed, "image_size": 128,
                                                   "round_to": args.round_to},
              "rows": rows}
    write_report(args.output_dir, "table3_hardware", result, markdown(result))
    return result


def markdown(result: dict) -> str:
    s = result["settings"]
    return "\n".join([
        f"# Table III hardware columns: `{result['model']}` (random weights), {result['dtype']} on {result['device']}",
        "", machine_line(result), "",
        (f"Memory = bytes of parameters and buffers (GB = 10^9 B); peak = the process's peak during profiling; "
         f"latency = median of {s['iters']} batch-1 `predict_action` calls after {s['warmup']} warm-up calls; "
         f"throughput = actions/s at batch 1 and at batch {s['batch_size']}; x = ratio to the dense row."), "",
        *table(["method", "memory (GB)", "x", "peak (GB)", "latency (ms)", "x", "throughput (actions/s)", "x",
                f"at batch {s['batch_size']}", "x"],
               [[r["method"], f"not measured: {r['error']}", *[""] * 8] if "error" in r else
                [r["method"], fmt(r["memory_gb"], 2), fmt(r["memory_gb_vs_dense"], 2), fmt(r["peak_memory_gb"], 2),
                 fmt(r["latency_ms"]), fmt(r["latency_ms_vs_dense"], 2), fmt(r["throughput"]),
                 fmt(r["throughput_vs_dense"], 2), fmt(r["throughput_batch"]), fmt(r["throughput_batch_vs_dense"], 2)]
                 for r in result["rows"]]),
        *[f"\n- {r['method']}: profiled on a synthetic episode ({r['inputs']}); it reused "
          f"{r['reused_fraction']:.1%} of the visual tokens' layer computations (random weights: the attention "
          "statistics that steer the reuse are not a trained model's)"
          for r in result["rows"] if "reused_fraction" in r],
    ]) + "\n"


main = report_main("table3_hardware", parse_args, run)


if __name__ == "__main__":
    main()
