"""Does compression pay in speed? Dense / RLRC / RLRC-4bit / dense + 4-bit against this machine's floor.

For each model, in one process and one after another (so ratios compare), each row is built fresh
(same seed), compressed, and profiled by `vla_compress.evaluation.profile` (latency median and p90 at
batch 1, throughput at batch 1 and `--batch-size`, stored bytes). Beside it stands the row's floor from
`vla_compress.evaluation.roofline`: bytes read per action / bandwidth + FLOPs / matmul rate, both rates
measured by this script at its start on the device it profiles, and the ratio measured / floor.

Models: `tiny-maniskill` (the embedded default, trained weights), `openvla-7b-proxy` (openvla-7b's
depth, head layout and fused 224 px ViTs at a width a CPU runs; random weights) and, on a GPU,
`openvla-7b` (random weights). Pruning uses the data-free l2 criterion, which gives the same shapes as
Taylor; the 4-bit rows use `--low-bit` (aten weight-only int4 on a CPU, bitsandbytes NF4 on a GPU).
The VLA-Cache row is the dense model as `VLACachePolicy`, profiled on consecutive frames (a still
background with a moving block, `table3_hardware.moving_block_episode`) with its own decode (`dynamic`);
its floor is the dense row's, as the tokens it reuses vary per step.

    python benchmarks/speed.py                                                    # CPU defaults
    python benchmarks/speed.py --device cuda --dtype bfloat16 --models openvla-7b --round-to 128

The targets of the output (issue #21) are read on the proxy: RLRC at least 4x dense throughput at
batch 1, RLRC-4bit at least RLRC's, and dense and RLRC within 1.5x of their floors.
Outputs in `--output-dir`: speed.json (machine, versions, rates, rows, targets) and speed.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from report import fmt, machine, machine_line, ratio, report_main, table, versions, write_report
from table3_hardware import compress, profile_row, release_memory

from vla_compress import load_vla
from vla_compress.evaluation.roofline import action_cost, measure_rates, weight_bytes_read
from vla_compress.modeling.modeling_openvla import DECODE_PATHS

# row key -> (label, pruning ratio or None, quantization bits or None)
ROWS: dict[str, tuple[str, float | None, int | None]] = {
    "dense": ("dense", None, None),
    "rlrc": ("RLRC (block pruning 90%)", 0.9, None),
    "rlrc_4bit": ("RLRC-4bit (90% + 4-bit)", 0.9, 4),
    "dense_4bit": ("dense + 4-bit", None, 4),
    "vla_cache": ("VLA-Cache (dense, moving-block episode)", None, None),
}
TARGET_MODEL = "openvla-7b-proxy"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None,
                        help="presets or OpenVLA directories (default: tiny-maniskill, openvla-7b-proxy, "
                             "and openvla-7b on a GPU)")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", default=None, help="default float32 on a CPU, bfloat16 on a GPU")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--low-bit", choices=("aten", "quanto", "bnb"), default=None,
                        help="4-bit backend (default aten on a CPU, bnb NF4 on a GPU)")
    parser.add_argument("--decode", choices=DECODE_PATHS, default="dynamic", help="predict_action's decode path")
    parser.add_argument("--batch-size", type=int, default=8, help="batch of the throughput column")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--round-to", type=int, default=None, help="kept widths of pruned rows are multiples of this")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/speed"))
    args = parser.parse_args(argv)
    for name in ("batch_size", "iters", "round_to", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    on_gpu = args.device.startswith("cuda")
    if args.device not in ("cpu",) and not on_gpu:
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if on_gpu and not cuda:
        parser.error("--device cuda but no GPU is visible")
    args.models = args.models or ["tiny-maniskill", TARGET_MODEL, *(["openvla-7b"] if on_gpu else [])]
    args.dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    args.low_bit = args.low_bit or ("bnb" if on_gpu else "aten")
    return args


def measure_row(name: str, key: str, args: argparse.Namespace, rates) -> dict[str, Any]:
    """Build, compress and profile one row; its floor from the FLOPs of its (unquantized) shapes."""
    label, sparsity, bits = ROWS[key]
    model = load_vla(name, device=args.device, dtype=args.dtype, seed=args.seed)
    try:
        compress(model, sparsity, None, args.dtype, args.round_to)
        cost = action_cost(model)  # FLOPs: quantized kernels are invisible to torch's flop counter
        if bits is not None:
            compress(model, None, bits, args.dtype, low_bit=args.low_bit)
            cost = dataclasses.replace(cost, bytes_read=weight_bytes_read(model, cost.prompt_tokens,
                                                                          cost.prefill_tokens))
        prof = profile_row(model, key, args, decode=args.decode)
    finally:
        del model
        release_memory()
    floor_ms = 1e3 * cost.floor_seconds(rates)
    return {"key": key, "method": label, "latency_ms": prof["latency_ms_median"],
            "latency_ms_p90": prof["latency_ms_p90"], "throughput": prof["throughput_batch1"],
            "throughput_batch": prof["throughput_batch"], "model_bytes": prof["model_bytes"],
            "flops": cost.flops, "bytes_read": cost.bytes_read, "prefill_tokens": cost.prefill_tokens,
            "floor_ms": floor_ms, "floor_ms_bytes": 1e3 * cost.bytes_read / rates.bytes_per_second,
            "floor_ms_flops": 1e3 * cost.flops / rates.flops_per_second,
            "latency_vs_floor": ratio(prof["latency_ms_median"], floor_ms),
            **({"reused_fraction": prof["policy_info"]["reused_fraction"]} if prof.get("policy_info") else {})}


def targets(rows: dict[str, dict]) -> list[dict[str, Any]]:
    """Issue #21's speed targets on one model's rows (None where a row is missing)."""
    def value(key: str, column: str) -> float | None:
        return rows[key][column] if key in rows and "error" not in rows[key] else None

    checks = [
        ("RLRC throughput at batch 1 / dense", ratio(value("rlrc", "throughput"), value("dense", "throughput")),
         ">=", 4.0),
        ("RLRC-4bit throughput at batch 1 / RLRC",
         ratio(value("rlrc_4bit", "throughput"), value("rlrc", "throughput")), ">=", 1.0),
        ("dense latency / floor", value("dense", "latency_vs_floor"), "<=", 1.5),
        ("RLRC latency / floor", value("rlrc", "latency_vs_floor"), "<=", 1.5),
    ]
    return [{"target": name, "value": v, "bar": f"{op} {bar}",
             "met": None if v is None else (v >= bar if op == ">=" else v <= bar)} for name, v, op, bar in checks]


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rates = measure_rates(args.device, getattr(torch, args.dtype))
    print(f"[speed] {args.device} {args.dtype}: {rates.bytes_per_second / 1e9:.1f} GB/s read, "
          f"{rates.flops_per_second / 1e9:.1f} GFLOP/s matmul", flush=True)
    models = []
    for name in args.models:
        rows: dict[str, dict] = {}
        for key in args.rows:
            print(f"[speed {time.strftime('%H:%M:%S')}] {name} {key}", flush=True)
            try:
                rows[key] = measure_row(name, key, args, rates)
            except (RuntimeError, ValueError, ImportError) as error:  # report the row as not measured, go on
                print(f"  failed: {error!r}", flush=True)
                rows[key] = {"key": key, "method": ROWS[key][0], "error": repr(error)}
                continue
            r = rows[key]
            print(f"  {r['latency_ms']:.1f} ms (floor {r['floor_ms']:.1f} ms, x{r['latency_vs_floor']:.2f}), "
                  f"{r['throughput']:.1f} actions/s", flush=True)
        dense = rows.get("dense")
        for r in rows.values():
            if "error" not in r:
                r["throughput_vs_dense"] = ratio(r["throughput"], dense.get("throughput")) if dense else None
        models.append({"model": name, "rows": list(rows.values()), "targets": targets(rows)})
    result = {"device": args.device, "dtype": args.dtype, "low_bit": args.low_bit, "decode": args.decode,
              "machine": machine(), "versions": versions(), "rates": rates.to_dict(), "target_model": TARGET_MODEL,
              "settings": {"batch_size": args.batch_size, "warmup": args.warmup, "iters": args.iters,
                           "round_to": args.round_to, "seed": args.seed, "image_size": 128},
              "models": models}
    write_report(args.output_dir, "speed", result, markdown(result))
    return result


def markdown(result: dict) -> str:
    s, rates = result["settings"], result["rates"]
    lines = [f"# Speed against the floor: {result['dtype']} on {result['device']}, 4-bit by {result['low_bit']}, "
             f"decode {result['decode']}", "", machine_line(result), "",
             f"Measured rates: {rates['bytes_per_second'] / 1e9:.1f} GB/s read, "
             f"{rates['flops_per_second'] / 1e9:.1f} GFLOP/s matmul ({rates['dtype']}). Latency = median (p90) of "
             f"{s['iters']} batch-1 `predict_action` calls after {s['warmup']} warm-up calls; floor = bytes read "
             "per action / bandwidth + FLOPs / matmul rate (vla_compress.evaluation.roofline)."]
    for entry in result["models"]:
        lines += ["", f"## {entry['model']}", "", *table(
            ["row", "latency (ms)", "p90", "floor (ms)", "x floor", "actions/s", "x dense",
             f"at batch {s['batch_size']}", "MB", "GFLOP"],
            [[r["method"], f"not measured: {r['error']}", *[""] * 8] if "error" in r else
             [r["method"], fmt(r["latency_ms"]), fmt(r["latency_ms_p90"]), fmt(r["floor_ms"]),
              fmt(r["latency_vs_floor"], 2), fmt(r["throughput"]), fmt(r["throughput_vs_dense"], 2),
              fmt(r["throughput_batch"]), fmt(r["model_bytes"] / 1e6), fmt(r["flops"] / 1e9, 2)]
             for r in entry["rows"]]),
            "", *table(["target" + (" (the bar)" if entry["model"] == result["target_model"] else ""), "value",
                        "bar", "met"],
                       [[t["target"], fmt(t["value"], 2), t["bar"], "—" if t["met"] is None else
                         ("yes" if t["met"] else "no")] for t in entry["targets"]])]
    return "\n".join(lines) + "\n"


main = report_main("speed", parse_args, run)


if __name__ == "__main__":
    main()
