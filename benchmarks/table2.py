"""The RLRC paper's Table II and Figures 2 and 4 on our ManiSkill3 suite: heavy pruning, then quantization.

Table II rows: LLM-Pruner 90% (block-wise, Taylor) + SFT; + 8-bit (bitsandbytes LLM.int8); + 4-bit
(bitsandbytes NF4). Columns: IND / OOD success, memory, latency, throughput.
Fig. 2 (`fig2_success_vs_sparsity.png`): success rate vs pruning ratio for LLM-Pruner (block, Taylor)
and FLAP, without recovery (`--sweep-sft` fine-tunes every point first, as many SFT runs as points).
Fig. 4 (`fig4_throughput_vs_sparsity.png`): batch-1 throughput vs LLM-Pruner ratio, with and without NF4.
Ratio 0 in both figures is the dense base.

The paper's Table II is on LIBERO spatial. The default `--suite maniskill` runs our suite; `--suite
libero_spatial` (or `libero_10`) evaluates on LIBERO instead (all 10 tasks count as IND, the OOD columns
stay empty) and needs `--demos DIR` with LIBERO HDF5 demonstrations (read with
`vla_compress.data.libero_hdf5.LiberoDataset`) for calibration and SFT, since LIBERO's demos cannot be
downloaded here. `fig2.py` and `fig4.py` run the two sweeps on their own.

    python benchmarks/table2.py --demos DEMOS                              # quick (default)
    python benchmarks/table2.py --preset smoke --output-dir /tmp/t2       # CI: numbers meaningless
    python benchmarks/table2.py --preset paper --device cuda --dtype bfloat16 --demos DIR

Presets (override with the flags):
- smoke: ratios 0.5 and 0.9; 3 SFT steps; 1 episode of 2 tasks (1 IND, 1 OOD) of 8 steps per evaluation;
  the random "tiny" model when "tiny-maniskill" is not installed.
- quick: ratios 0.1, 0.3, 0.5, 0.7, 0.9; SFT 1500 steps at batch 8; 2 episodes per task on all 25 tasks
  (14 evaluations; measured on the 2-core CPU: 18 min on top of fig2.py's cached sweep, which took 62 min).
- paper: ratios 0.1 ... 0.9; SFT 10k steps; 8 episodes per task; meant for a GPU and a real OpenVLA.
On LIBERO, smoke evaluates task 0 for 8 steps; quick and paper all 10 tasks at the suite's episode length.

Stage-level caching under `--output-dir` (models/, sft/, eval/, profile/), as in table3.py. Outputs:
table2.json, table2.md, fig2_success_vs_sparsity.png, fig4_throughput_vs_sparsity.png.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from common import (
    SWEEP_METHODS,
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
    percent,
    pyplot,
    quantized,
    report_main,
    save_figure,
    stage_lines,
    stage_seconds,
    suite_note,
    table,
    write_report,
)

TABLE_RATIO = 0.9
COLUMNS = ("ind_sr", "ood_sr", "memory_mb", "inference_ms", "throughput")

# RLRC paper, Table II (OpenVLA-7B, LIBERO spatial, RTX 5880 Ada): SR, memory (GB), throughput (samples/s).
PAPER_TABLE2 = [
    ("LLM-Pruner 90% + SFT", 79.6, 3.539, 15.2),
    ("+ 8bit", 76.6, 2.205, 3.9),
    ("+ 4bit", 70.4, 1.665, 11.2),
]
PAPER_FIELDS = ("method", "spatial_sr", "memory_gb", "throughput")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = parser_for(__doc__, SWEEP_PRESETS, "outputs/table2", suite=True)
    add_ratios_flag(parser, help="pruning ratios of the Fig. 2 / Fig. 4 sweeps, each in (0, 1)")
    parser.add_argument("--sweep-sft", action="store_true", help="SFT every Fig. 2 point before evaluating it")
    args = parse_checked(parser, argv, ("sft_steps", "episodes", "threads"))
    return args


def row(key: str, method: str, measured: dict) -> dict:
    ev, prof = measured["eval"], measured["profile"]
    return {"key": key, "method": method, "status": "ok",
            "ind_sr": percent(ev["ind_success_rate"]), "ood_sr": percent(ev["ood_success_rate"]),
            "memory_mb": prof["model_bytes"] / 1e6, "inference_ms": prof["latency_ms_median"],
            "throughput": prof["throughput_batch1"], "params": prof["params"],
            "throughput_batch": prof["throughput_batch"], "profile_batch_size": prof["batch_size"],
            "peak_memory_mb": prof["peak_memory_bytes"] / 1e6, "peak_memory_kind": prof["peak_memory_kind"],
            "episodes_per_task": ev["episodes_per_task"]}


def point(ratio: float, measured: dict) -> dict[str, Any]:
    out: dict[str, Any] = {"ratio": ratio, "throughput": measured["profile"]["throughput_batch1"],
                           "memory_mb": measured["profile"]["model_bytes"] / 1e6}
    if "eval" in measured:
        out |= {"ind_sr": percent(measured["eval"]["ind_success_rate"]),
                "ood_sr": percent(measured["eval"]["ood_success_rate"]),
                "mean_sr": percent(measured["eval"]["mean_success_rate"])}
    return out


def run(args: argparse.Namespace) -> dict:
    preset = apply_flags(SWEEP_PRESETS[args.preset], args, ("model", "sft_steps", "episodes", "threads", "ratios"))
    p = Stages("table2", args, preset)
    p.setup()

    def pruned(method: str, ratio: float):
        return lambda: p.pruned(key_of(method, ratio), {"ratio": ratio, **SWEEP_METHODS[method][1]})

    # Table II
    top = key_of("llm_pruner", TABLE_RATIO)
    sft = lambda: p.sft(f"{top}_sft", pruned("llm_pruner", TABLE_RATIO))  # noqa: E731
    rows = [row(f"{top}_sft", "LLM-Pruner 90% + SFT", p.measure(f"{top}_sft", sft)),
            row(f"{top}_sft_int8", "+ 8-bit (bnb LLM.int8)", p.measure(f"{top}_sft_int8", quantized(sft, 8))),
            row(f"{top}_sft_nf4", "+ 4-bit (bnb NF4)", p.measure(f"{top}_sft_nf4", quantized(sft, 4)))]

    # Fig. 2: success vs sparsity; Fig. 4: throughput vs sparsity with / without NF4
    dense = p.measure("dense", p.base)
    fig2: dict[str, list[dict]] = {}
    for method in SWEEP_METHODS:
        fig2[method] = [point(0.0, dense)]
        for ratio in preset.ratios:
            key = key_of(method, ratio)
            if args.sweep_sft:
                load = lambda key=key, method=method, ratio=ratio: p.sft(f"{key}_sft", pruned(method, ratio))  # noqa: E731
                fig2[method].append(point(ratio, p.measure(f"{key}_sft", load)))
            else:
                fig2[method].append(point(ratio, p.measure(key, pruned(method, ratio))))
    dense4 = p.measure("dense_nf4", quantized(p.base, 4), evaluation=False)
    fig4 = {"fp": [point(0.0, dense)], "nf4": [point(0.0, dense4)]}
    for ratio in preset.ratios:
        key = key_of("llm_pruner", ratio)
        fig4["fp"].append(point(ratio, p.measure(key, pruned("llm_pruner", ratio), evaluation=False)))
        fig4["nf4"].append(point(ratio, p.measure(f"{key}_nf4", quantized(pruned("llm_pruner", ratio), 4),
                                                  evaluation=False)))

    result = {
        "preset": args.preset, "model": p.model_name, "suite": args.suite, "suite_note": suite_note(args.suite),
        "device": args.device, "dtype": args.dtype, "seed": args.seed, "settings": dataclasses.asdict(preset),
        "sweep_sft": args.sweep_sft, "machine": machine(), "columns": list(COLUMNS), "rows": rows,
        "fig2": fig2, "fig4": fig4, "stage_seconds": stage_seconds(args.output_dir),
        "paper_table2": [dict(zip(PAPER_FIELDS, r, strict=True)) for r in PAPER_TABLE2],
    }
    written = write_report(args.output_dir, "table2", result, markdown(result))
    plot_fig2(result, args.output_dir / "fig2_success_vs_sparsity.png")
    plot_fig4(result, args.output_dir / "fig4_throughput_vs_sparsity.png")
    p.log(f"wrote {args.output_dir}/{written}, fig2_success_vs_sparsity.png, "
          "fig4_throughput_vs_sparsity.png")
    return result


# ---- outputs -----------------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    recovery = "each point after SFT" if result["sweep_sft"] else "no recovery"
    lines = [
        f"# Table II on our suite (preset `{result['preset']}`, base `{result['model']}`, suite `{result['suite']}`)",
        "", machine_line(result), "",
        (f"Success rates in % over {result['settings']['episodes']} episode(s) per task; SFT "
         f"{result['settings']['sft_steps']} steps; memory = bytes of parameters and buffers (MB = 10^6 B); "
         "latency = median of one `predict_action` at batch 1; throughput = actions/s at batch 1."), "",
        *table(["method", "IND SR", "OOD SR", "memory (MB)", "latency (ms)", "throughput (actions/s)"],
               [[r["method"], fmt(r["ind_sr"]), fmt(r["ood_sr"]), fmt(r["memory_mb"], 2), fmt(r["inference_ms"]),
                 fmt(r["throughput"])] for r in result["rows"]]),
        "", f"Suite: {result['suite_note']}", "",
        f"## Fig. 2 data: success (%) vs pruning ratio ({recovery}; ratio 0 = dense)", "",
        *table(["method", "ratio", "IND SR", "OOD SR", "memory (MB)"],
               [[SWEEP_METHODS[m][0], f"{q['ratio']:.2f}", fmt(q["ind_sr"]), fmt(q["ood_sr"]), fmt(q["memory_mb"], 2)]
                for m, points in result["fig2"].items() for q in points]),
        "", "## Fig. 4 data: throughput (actions/s, batch 1) vs LLM-Pruner ratio", "",
        *table(["ratio", "throughput", "throughput with NF4", "memory (MB)", "memory with NF4 (MB)"],
               [[f"{a['ratio']:.2f}", fmt(a["throughput"]), fmt(b["throughput"]), fmt(a["memory_mb"], 2),
                 fmt(b["memory_mb"], 2)] for a, b in zip(result["fig4"]["fp"], result["fig4"]["nf4"], strict=True)]),
        "", "## The paper's Table II (OpenVLA-7B, LIBERO spatial, RTX 5880 Ada)", "",
        *table(["method", "spatial SR", "memory (GB)", "throughput (samples/s)"],
               [[name, fmt(sr), fmt(gb, 3), fmt(tp)] for name, sr, gb, tp in PAPER_TABLE2]),
        "", *stage_lines(result),
    ]
    return "\n".join(lines) + "\n"


def plot_fig2(result: dict, path: Path) -> None:
    """Success rate (mean over tasks, IND and OOD) vs pruning ratio, one line per method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for method, points in result["fig2"].items():
        ratios = [q["ratio"] for q in points]
        ax.plot(ratios, [q["ind_sr"] or 0.0 for q in points], marker="o", label=f"{SWEEP_METHODS[method][0]} IND")
        ax.plot(ratios, [q["ood_sr"] or 0.0 for q in points], marker="x", linestyle="--",
                label=f"{SWEEP_METHODS[method][0]} OOD")
    ax.set_xlabel("pruning ratio")
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(-2, 102)
    recovery = "after SFT" if result["sweep_sft"] else "no recovery"
    ax.set_title(f"Success vs sparsity, {recovery} (cf. paper Fig. 2)")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_fig4(result: dict, path: Path) -> None:
    """Batch-1 throughput vs LLM-Pruner ratio, with and without NF4."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, label in (("fp", "LLM-Pruner"), ("nf4", "LLM-Pruner + 4-bit (NF4)")):
        points = result["fig4"][name]
        ax.plot([q["ratio"] for q in points], [q["throughput"] for q in points], marker="o", label=label)
    ax.set_xlabel("pruning ratio")
    ax.set_ylabel("throughput (actions/s, batch 1)")
    ax.set_title("Throughput vs sparsity (cf. paper Fig. 4)")
    ax.legend()
    save_figure(fig, path)


main = report_main("table2", parse_args, run)


if __name__ == "__main__":
    main()
