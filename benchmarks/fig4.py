"""The RLRC paper's Fig. 4: throughput vs sparsity of block-wise pruning, with and without 4-bit quantization.

For every ratio of the preset (0 = the dense base): the model pruned block-wise (LLM-Pruner's structure:
`prune(model, ratio, method="block")`, first and last decoder layers kept) is profiled in full precision
and again after `quantize(model, bits=4, method="bnb", quant_type="nf4")` (bitsandbytes NF4, as the
tables use on every device, the CPU included). Profiles only (`vla_compress.evaluation.profile`): no
simulator and no evaluation.

Importance: block-wise pruning removes the same fraction of heads and MLP channels in every pruned layer
whatever the importance criterion, so the shapes, and with them throughput and memory, depend on the
ratio alone (checked on the tiny model: equal widths and parameter counts for l1, l2 and Taylor at 0.5
and 0.9). The default `--importance l2` is data-free, so fig4 needs neither demos nor the simulator.
`--importance taylor` is LLM-Pruner's criterion exactly (needs calibration demos: `--demos DIR`, else
generated with the ManiSkill simulator into <output-dir>/demos) and shares table2.py's and fig2.py's
cached models (`models/llm_pruner<NN>/`); the l2 / l1 models are cached as `models/block_l2_<NN>/` etc.

    python benchmarks/fig4.py                                              # quick (default)
    python benchmarks/fig4.py --preset smoke --output-dir /tmp/fig4        # CI: timings from 3 calls
    python benchmarks/fig4.py --preset paper --device cuda --dtype bfloat16 --model openvla/openvla-7b

Presets (override with the flags):
- smoke: ratios 0.5 and 0.9; 1 warm-up and 3 timed calls per profile, batch 2; falls back to the random
  "tiny" model when "tiny-maniskill" is not installed.
- quick: from "tiny-maniskill"; ratios 0.1, 0.3, 0.5, 0.7, 0.9; 3 warm-up and 20 timed calls per profile,
  batch 8 (12 profiles; 1.5 min on the shared 2-core CPU, docs/benchmarks.md).
- paper: ratios 0.1, 0.2, ..., 0.9; 5 warm-up and 50 timed calls, batch 8; meant for a GPU and a real
  OpenVLA.

Stage-level caching under `--output-dir` (models/<prefix><NN>/, profile/<key>.json and
profile/<key>_nf4.json), as in table3.py; the 4-bit profiles re-quantize the cached full-precision
model. Outputs: fig4.json, fig4.md, fig4.png.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from common import (
    SWEEP_PRESETS,
    Stages,
    add_ratios_flag,
    apply_flags,
    fmt,
    key_of,
    machine,
    machine_line,
    parse_checked,
    parser_for,
    pyplot,
    quantized,
    ratio,
    report_main,
    save_figure,
    stage_lines,
    stage_seconds,
    table,
    versions,
    write_report,
)

IMPORTANCES = ("l2", "l1", "taylor")
PRECISIONS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
QUANTIZED = "4bit"
COLUMNS = ("ratio", "precision", "throughput", "throughput_batch", "inference_ms", "memory_mb", "params", "speedup")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = parser_for(__doc__, SWEEP_PRESETS, "outputs/fig4")
    add_ratios_flag(parser)
    parser.add_argument("--importance", choices=IMPORTANCES, default="l2",
                        help="block-wise importance; the shapes (and timings) are the same for every criterion")
    args = parse_checked(parser, argv, ("threads",))
    return args


def prefix_of(importance: str) -> str:
    """Cache-key prefix: Taylor is LLM-Pruner's criterion and shares table2/fig2's models."""
    return "llm_pruner" if importance == "taylor" else f"block_{importance}_"


def row(key: str, sparsity: float, quantization: str | None, prof: dict) -> dict[str, Any]:
    """One profile: batch-1 throughput (actions/s) and latency (ms), throughput at the profile batch, memory."""
    precision = QUANTIZED if quantization else PRECISIONS.get(prof["dtype"], prof["dtype"])
    return {"key": key, "ratio": sparsity, "precision": precision, "quantization": quantization, "status": "ok",
            "throughput": prof["throughput_batch1"], "throughput_batch": prof["throughput_batch"],
            "profile_batch_size": prof["batch_size"], "inference_ms": prof["latency_ms_median"],
            "inference_ms_p90": prof["latency_ms_p90"], "memory_mb": prof["model_bytes"] / 1e6,
            "params": prof["params"], "dtype": prof["dtype"], "device": prof["device"],
            "peak_memory_mb": prof["peak_memory_bytes"] / 1e6, "peak_memory_kind": prof["peak_memory_kind"]}


def run(args: argparse.Namespace) -> dict:
    preset = apply_flags(SWEEP_PRESETS[args.preset], args, ("model", "threads", "ratios"))
    p = Stages("fig4", args, preset)
    p.setup()
    settings = {"method": "block", "importance": args.importance}
    calibrate = args.importance == "taylor"
    rows = []
    for sparsity in (0.0, *preset.ratios):
        if sparsity == 0.0:
            key, load = "dense", p.base
        else:
            key = key_of(prefix_of(args.importance), sparsity)
            load = lambda key=key, sparsity=sparsity: p.pruned(key, {"ratio": sparsity, **settings}, calibrate)  # noqa: E731
        full = p.measure(key, load, evaluation=False)["profile"]
        four = p.measure(f"{key}_nf4", quantized(load, 4), evaluation=False)["profile"]
        rows += [row(key, sparsity, None, full), row(f"{key}_nf4", sparsity, "bnb nf4", four)]
    reference = rows[0]["throughput"]
    for r in rows:
        r["speedup"] = ratio(r["throughput"], reference)
    result = {
        "preset": args.preset, "model": p.model_name, "importance": args.importance, "device": args.device,
        "dtype": args.dtype, "seed": args.seed, "settings": dataclasses.asdict(preset), "machine": machine(),
        "versions": versions(), "columns": list(COLUMNS), "rows": rows, "stage_seconds": stage_seconds(args.output_dir),
    }
    written = write_report(args.output_dir, "fig4", result, markdown(result))
    plot(result, args.output_dir / "fig4.png")
    p.log(f"wrote {args.output_dir}/{written}, fig4.png")
    return result


# ---- outputs -----------------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    settings = result["settings"]
    lines = [
        f"# Fig. 4: throughput vs sparsity, with and without 4-bit (preset `{result['preset']}`, base "
        f"`{result['model']}`)", "", machine_line(result), "",
        (f"Block-wise pruning (importance `{result['importance']}`; the shapes do not depend on it) at each ratio "
         "(0 = the dense base), profiled unquantized and with bitsandbytes NF4. Throughput = actions/s at batch 1 "
         f"(and at batch {settings['profile_batch']}); latency = median of {settings['profile_iters']} "
         f"`predict_action` calls at batch 1 after {settings['profile_warmup']} warm-up calls; memory = bytes "
         "of parameters and buffers (MB = 10^6 B); speedup = batch-1 throughput / the dense unquantized row's."),
        "",
        *table(["ratio", "precision", "throughput (actions/s)", f"throughput at batch {settings['profile_batch']}",
                "latency (ms)", "memory (MB)", "params (M)", "speedup"],
               [[f"{r['ratio']:.2f}", r["precision"], fmt(r["throughput"]), fmt(r["throughput_batch"]),
                 fmt(r["inference_ms"]), fmt(r["memory_mb"], 2), f"{r['params'] / 1e6:.2f}", fmt(r["speedup"], 2)]
                for r in result["rows"]]),
        "", "Plot: `fig4.png`.", "", *stage_lines(result),
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Batch-1 throughput (left) and memory (right) vs pruning ratio, unquantized and 4-bit."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for precision in dict.fromkeys(r["precision"] for r in result["rows"]):
        points = [r for r in result["rows"] if r["precision"] == precision]
        label = "block pruning + 4-bit (NF4)" if precision == QUANTIZED else f"block pruning ({precision})"
        ratios = [r["ratio"] for r in points]
        left.plot(ratios, [r["throughput"] for r in points], marker="o", label=label)
        right.plot(ratios, [r["memory_mb"] for r in points], marker="o", label=label)
    left.set_ylabel("throughput (actions/s, batch 1)")
    right.set_ylabel("memory (MB)")
    for ax in (left, right):
        ax.set_xlabel("pruning ratio (sparsity)")
        ax.legend(fontsize=7)
    fig.suptitle("Throughput vs sparsity, with and without 4-bit (cf. paper Fig. 4)")
    save_figure(fig, path)


main = report_main("fig4", parse_args, run)


if __name__ == "__main__":
    main()
