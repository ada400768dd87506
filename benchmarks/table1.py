"""The RLRC paper's Table I on our ManiSkill3 suite: quantization and 20% pruning, before and after SFT.

Rows, in order: dense base; 8-bit (bitsandbytes LLM.int8); 4-bit (bitsandbytes NF4); Magnitude 20%;
Wanda 20%; LLM-Pruner 20% (block-wise, Taylor); FLAP 20%. Every pruning row is evaluated right after
pruning and again after SFT on the demos (`recover(model, sft=SFTConfig(...))`); the Magnitude and Wanda
models stay sparse through SFT (their zero weights get zero gradients; `sparsity` in the JSON is checked
after SFT). Every row is evaluated on the IND and OOD tasks and profiled the same way.

The paper measured Table I on LIBERO (spatial / long; LIBERO-Long is `libero_10`). The default
`--suite maniskill` runs our suite. `--suite libero_spatial` or `--suite libero_10` evaluates every row on
LIBERO instead (`vla_compress.evaluation.evaluate` rolls LIBERO out; its 10 tasks all count as IND, so
the OOD columns stay empty) and needs `--demos DIR` with LIBERO HDF5 demonstrations, read with
`vla_compress.data.libero_hdf5.LiberoDataset`, for calibration and SFT: LIBERO's demos cannot be
downloaded here, so bring your own (and a `--model` trained on LIBERO for meaningful success rates).
The paper's Table I is printed beside ours for reference.

    python benchmarks/table1.py --demos DEMOS                              # quick (default)
    python benchmarks/table1.py --preset smoke --output-dir /tmp/t1       # CI: numbers meaningless
    python benchmarks/table1.py --preset paper --device cuda --dtype bfloat16 --demos DIR

Presets (override with the flags):
- smoke: 3 SFT steps at batch 2, 1 episode of 2 tasks (1 IND, 1 OOD) of 8 steps per evaluation; falls
  back to the random "tiny" model when "tiny-maniskill" is not installed.
- quick: from "tiny-maniskill"; SFT 500 steps at batch 8 per pruning method, 2 episodes per task on all
  25 tasks (11 evaluations; not yet run, estimated at 1-1.5 h on the 2-core CPU from table3's stage speeds).
- paper: SFT 10k steps, 8 episodes per task, 80-step episodes; meant for a GPU and a real OpenVLA.
On LIBERO, smoke evaluates task 0 for 8 steps; quick and paper all 10 tasks at the suite's episode
length (220 steps for libero_spatial, 520 for libero_10).

Stage-level caching under `--output-dir` (models/, sft/<key>/, eval/, profile/, sparsity/), as in
table3.py. Outputs: table1.json, table1.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from common import (
    PAPER,
    SMOKE,
    Preset,
    Stages,
    apply_flags,
    fmt,
    machine,
    machine_line,
    parse_checked,
    parser_for,
    percent,
    quantized,
    report_main,
    stage_lines,
    stage_seconds,
    suite_note,
    table,
    write_report,
)

PRESETS: dict[str, Preset] = {
    "smoke": Preset(**SMOKE),
    "quick": Preset(sft_steps=500),
    "paper": Preset(**PAPER),
}

# key, method name, prune() settings (None: not a pruning row), quantization bits
ROWS: list[tuple[str, str, dict | None, int | None]] = [
    ("dense", "dense", None, None),
    ("int8", "8-bit (bnb LLM.int8)", None, 8),
    ("nf4", "4-bit (bnb NF4)", None, 4),
    ("magnitude20", "Magnitude 20%", {"ratio": 0.2, "method": "magnitude"}, None),
    ("wanda20", "Wanda 20%", {"ratio": 0.2, "method": "wanda"}, None),
    ("llm_pruner20", "LLM-Pruner 20% (block, Taylor)", {"ratio": 0.2, "method": "block", "importance": "taylor"},
     None),
    ("flap20", "FLAP 20%", {"ratio": 0.2, "method": "flap"}, None),
]
COLUMNS = ("ind_sr", "ood_sr", "ind_sr_sft", "ood_sr_sft", "params", "memory_mb", "inference_ms", "throughput")

# RLRC paper, Table I (OpenVLA-7B, LIBERO, RTX 5880 Ada): spatial SR, long SR, spatial SR after SFT,
# params (B), memory (GB), latency (ms), throughput (samples/s); None = not in our reference notes.
PAPER_TABLE1 = [
    ("OpenVLA (dense)", 84.7, 53.7, None, None, 14.858, 169.0, 5.9),
    ("+8bit", 84.6, 52.0, None, None, 7.949, 282.7, None),
    ("+4bit", 81.0, 49.8, None, None, 4.971, 134.1, None),
    ("Magnitude 20%", 83.4, None, 80.4, None, None, None, None),
    ("Wanda 20%", 84.0, None, 84.6, None, None, None, None),
    ("LLM-Pruner 20%", 23.4, None, 84.0, 6.23, 12.433, None, None),
    ("FLAP 20%", 0.2, None, 82.6, None, None, None, None),
]
PAPER_FIELDS = ("method", "spatial_sr", "long_sr", "spatial_sr_sft", "params_b", "memory_gb", "latency_ms",
                "throughput")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = parser_for(__doc__, PRESETS, "outputs/table1", suite=True)
    return parse_checked(parser, argv, ("sft_steps", "episodes", "threads"))


def row(key: str, method: str, before: dict, after: dict | None) -> dict:
    """One row: success in %, params, memory in MB (10^6 B), latency in ms, throughput in actions/s."""
    ev, prof = before["eval"], before["profile"]
    values: dict[str, Any] = {
        "ind_sr": percent(ev["ind_success_rate"]), "ood_sr": percent(ev["ood_success_rate"]),
        "ind_sr_sft": None if after is None else percent(after["eval"]["ind_success_rate"]),
        "ood_sr_sft": None if after is None else percent(after["eval"]["ood_success_rate"]),
        "params": prof["params"], "memory_mb": prof["model_bytes"] / 1e6,
        "inference_ms": prof["latency_ms_median"], "throughput": prof["throughput_batch1"],
    }
    extra = {"inference_ms_p90": prof["latency_ms_p90"], "throughput_batch": prof["throughput_batch"],
             "profile_batch_size": prof["batch_size"], "peak_memory_mb": prof["peak_memory_bytes"] / 1e6,
             "peak_memory_kind": prof["peak_memory_kind"], "episodes_per_task": ev["episodes_per_task"],
             "sparsity": before.get("sparsity", {}).get("llm_sparsity"),
             "sparsity_sft": None if after is None else after.get("sparsity", {}).get("llm_sparsity")}
    return {"key": key, "method": method, "status": "ok", **values, **extra}


def markdown(result: dict) -> str:
    rows = result["rows"]
    cells = []
    for r in rows:
        sparsity = "" if r["sparsity"] is None else f"{r['sparsity']:.3f} → {fmt(r['sparsity_sft'], 3)}"
        cells.append([r["method"], fmt(r["ind_sr"]), fmt(r["ood_sr"]), fmt(r["ind_sr_sft"]), fmt(r["ood_sr_sft"]),
                      f"{r['params'] / 1e6:.2f}", sparsity, fmt(r["memory_mb"], 2), fmt(r["inference_ms"]),
                      fmt(r["throughput"])])
    lines = [
        f"# Table I on our suite (preset `{result['preset']}`, base `{result['model']}`, suite `{result['suite']}`)",
        "", machine_line(result), "",
        (f"Success rates in % over {result['settings']['episodes']} episode(s) per task, before / after SFT "
         f"({result['settings']['sft_steps']} steps; '—' = no SFT for that row); params in millions (stored "
         "parameters: unstructured pruning zeroes weights without removing them, see the LLM sparsity before → "
         "after SFT); memory = bytes of parameters and buffers (MB = 10^6 B); latency = median of one "
         "`predict_action` at batch 1; throughput = actions/s at batch 1."), "",
        *table(["method", "IND SR", "OOD SR", "IND SR after SFT", "OOD SR after SFT", "params (M)",
                "LLM sparsity", "memory (MB)", "latency (ms)", "throughput (actions/s)"], cells),
        "", f"Suite: {result['suite_note']}", "",
        "## The paper's Table I (OpenVLA-7B, LIBERO, RTX 5880 Ada"
        + ("; LIBERO columns, not ours)" if result["suite"] == "maniskill" else ")"), "",
        *table(["method", "spatial SR", "long SR", "spatial SR after SFT", "params (B)", "memory (GB)",
                "latency (ms)", "throughput (samples/s)"],
               [[name, *(fmt(v, d) for v, d in zip(values, (1, 1, 1, 2, 3, 1, 1), strict=True))]
                for name, *values in PAPER_TABLE1]),
        "", *stage_lines(result),
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict:
    preset = apply_flags(PRESETS[args.preset], args, ("model", "sft_steps", "episodes", "threads"))
    p = Stages("table1", args, preset)
    p.setup()
    rows = []
    for key, method, settings, bits in ROWS:
        if settings is None:
            load = p.base if bits is None else quantized(p.base, bits)
            rows.append(row(key, method, p.measure(key, load), None))
            continue
        unstructured = settings["method"] in ("magnitude", "wanda")
        before = p.measure(key, lambda key=key, settings=settings: p.pruned(key, settings), sparsity=unstructured)
        after = p.measure(f"{key}_sft", lambda key=key, settings=settings: p.sft(
            f"{key}_sft", lambda: p.pruned(key, settings)), profiling=False, sparsity=unstructured)
        rows.append(row(key, method, before, after))
    result = {
        "preset": args.preset, "model": p.model_name, "suite": args.suite, "suite_note": suite_note(args.suite),
        "device": args.device, "dtype": args.dtype, "seed": args.seed, "settings": dataclasses.asdict(preset),
        "machine": machine(), "columns": list(COLUMNS), "rows": rows, "stage_seconds": stage_seconds(args.output_dir),
        "paper_table1": [dict(zip(PAPER_FIELDS, r, strict=True)) for r in PAPER_TABLE1],
    }
    written = write_report(args.output_dir, "table1", result, markdown(result))
    p.log(f"wrote {args.output_dir}/{written}")
    return result


main = report_main("table1", parse_args, run)


if __name__ == "__main__":
    main()
