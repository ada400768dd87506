"""The RLRC paper's Fig. 2 on our ManiSkill3 suite: success rate vs sparsity of structured pruning, no recovery.

Lines: LLM-Pruner (block-wise, Taylor importance, first and last decoder layers kept) and FLAP, each
evaluated right after `prune(model, ratio, ...)` at every ratio of the preset, without SFT or PPO.
Sparsity 0 is the dense base, shared by both lines. Every point is evaluated on the IND and OOD tasks
(`vla_compress.evaluation.evaluate`) and profiled (`vla_compress.evaluation.profile`) for its stored
parameters and bytes. The paper's figure is on LIBERO; its values are not in our reference notes.

`--suite libero_spatial` (or `libero_10`) evaluates on LIBERO instead (all 10 tasks count as IND, OOD
stays empty) and needs `--demos DIR` with LIBERO HDF5 demonstrations for the calibration, read with
`vla_compress.data.libero_hdf5.LiberoDataset` (LIBERO's demos cannot be downloaded here).

    python benchmarks/fig2.py --demos DEMOS                              # quick (default)
    python benchmarks/fig2.py --preset smoke --output-dir /tmp/fig2       # CI: numbers meaningless
    python benchmarks/fig2.py --preset paper --device cuda --dtype bfloat16 --demos DIR

Presets (override with the flags):
- smoke: ratios 0.5 and 0.9; 1 episode of 2 tasks (1 IND, 1 OOD) of 8 steps per evaluation; falls back
  to the random "tiny" model when "tiny-maniskill" is not installed.
- quick: from "tiny-maniskill"; ratios 0.1, 0.3, 0.5, 0.7, 0.9; 2 episodes per task on all 25 tasks of
  60 steps (11 evaluations; 62 min measured on the 2-core CPU next to other jobs, docs/benchmarks.md).
- paper: ratios 0.1, 0.2, ..., 0.9; 8 episodes per task, 80-step episodes; meant for a GPU and a real
  OpenVLA.
On LIBERO, smoke evaluates task 0 for 8 steps; quick and paper all 10 tasks at the suite's episode length.

Stage-level caching under `--output-dir` (models/<method><NN>/, eval/, profile/), with the keys
table2.py uses, so the two can share a directory. Outputs: fig2.json, fig2.md, fig2.png.
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
    report_main,
    save_figure,
    stage_lines,
    stage_seconds,
    suite_note,
    table,
    versions,
    write_report,
)

COLUMNS = ("method", "ratio", "ind_sr", "ood_sr", "mean_sr", "params", "param_fraction", "memory_mb")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = parser_for(__doc__, SWEEP_PRESETS, "outputs/fig2", suite=True)
    add_ratios_flag(parser)
    args = parse_checked(parser, argv, ("episodes", "threads"))
    return args


def row(key: str, method: str, ratio: float, measured: dict, dense_params: int) -> dict[str, Any]:
    """One point: success in %, stored parameters (and their fraction of the dense model's), memory in MB."""
    ev, prof = measured["eval"], measured["profile"]
    return {"key": key, "method": method, "label": SWEEP_METHODS[method][0], "ratio": ratio, "status": "ok",
            "ind_sr": percent(ev["ind_success_rate"]), "ood_sr": percent(ev["ood_success_rate"]),
            "mean_sr": percent(ev["mean_success_rate"]), "params": prof["params"],
            "param_fraction": prof["params"] / dense_params, "memory_mb": prof["model_bytes"] / 1e6,
            "mean_episode_length": ev["mean_episode_length"], "episodes_per_task": ev["episodes_per_task"],
            "success_rate": ev["success_rate"]}


def run(args: argparse.Namespace) -> dict:
    preset = apply_flags(SWEEP_PRESETS[args.preset], args, ("model", "episodes", "threads", "ratios"))
    p = Stages("fig2", args, preset)
    p.setup()
    dense = p.measure("dense", p.base)
    dense_params = dense["profile"]["params"]
    rows = []
    for method, (_, settings) in SWEEP_METHODS.items():
        rows.append(row("dense", method, 0.0, dense, dense_params))
        for ratio in preset.ratios:
            key = key_of(method, ratio)
            load = lambda key=key, settings=settings, ratio=ratio: p.pruned(key, {"ratio": ratio, **settings})  # noqa: E731
            rows.append(row(key, method, ratio, p.measure(key, load), dense_params))
    result = {
        "preset": args.preset, "model": p.model_name, "suite": args.suite, "suite_note": suite_note(args.suite),
        "device": args.device, "dtype": args.dtype, "seed": args.seed, "settings": dataclasses.asdict(preset),
        "machine": machine(), "versions": versions(), "columns": list(COLUMNS), "rows": rows,
        "stage_seconds": stage_seconds(args.output_dir),
    }
    written = write_report(args.output_dir, "fig2", result, markdown(result))
    plot(result, args.output_dir / "fig2.png")
    p.log(f"wrote {args.output_dir}/{written}, fig2.png")
    return result


# ---- outputs -----------------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    settings = result["settings"]
    lines = [
        f"# Fig. 2 on our suite: success vs sparsity, no recovery (preset `{result['preset']}`, base "
        f"`{result['model']}`, suite `{result['suite']}`)", "", machine_line(result), "",
        (f"Success rates in % over {settings['episodes']} episode(s) per task, right after pruning (no SFT, no "
         "PPO); ratio = `prune(model, ratio)` (ratio 0 = the dense base); params = stored parameters in "
         "millions and as a fraction of the dense model's; memory = bytes of parameters and buffers "
         "(MB = 10^6 B)."), "",
        *table(["method", "ratio", "IND SR", "OOD SR", "mean SR", "params (M)", "params / dense", "memory (MB)"],
               [[r["label"], f"{r['ratio']:.2f}", fmt(r["ind_sr"]), fmt(r["ood_sr"]), fmt(r["mean_sr"]),
                 f"{r['params'] / 1e6:.2f}", fmt(r["param_fraction"], 3), fmt(r["memory_mb"], 2)]
                for r in result["rows"]]),
        "", f"Suite: {result['suite_note']}", "", "Plot: `fig2.png`.", "", *stage_lines(result),
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """IND (solid) and OOD (dashed) success vs pruning ratio, one colour per method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, method in enumerate(SWEEP_METHODS):
        points = [r for r in result["rows"] if r["method"] == method]
        ratios = [r["ratio"] for r in points]
        for column, style, split in (("ind_sr", "-", "IND"), ("ood_sr", "--", "OOD")):
            if all(r[column] is None for r in points):
                continue  # LIBERO: no OOD tasks
            ax.plot(ratios, [r[column] or 0.0 for r in points], linestyle=style, marker="o" if split == "IND" else "x",
                    color=f"C{i}", label=f"{SWEEP_METHODS[method][0]} {split}")
    ax.set_xlabel("pruning ratio (sparsity)")
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Success vs sparsity, no recovery ({result['suite']}; cf. paper Fig. 2)")
    ax.legend(fontsize=7)
    save_figure(fig, path)


main = report_main("fig2", parse_args, run)


if __name__ == "__main__":
    main()
