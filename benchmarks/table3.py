"""The RLRC paper's Table III on our ManiSkill3 suite: success, memory, latency and throughput per method.

Rows, in order: dense base; VLA-Cache (the dense base with `VLACachePolicy`, the authors' settings);
dense + 4-bit (bitsandbytes NF4); LLM-Pruner 20% (block-wise, Taylor, no recovery); RLRC (block-wise 90%
Taylor + SFT + PPO); RLRC-4bit (RLRC + NF4). Every row is evaluated on the IND and OOD tasks and profiled
the same way (`vla_compress.evaluation.profile`); VLA-Cache, whose speed depends on consecutive frames,
is profiled on the first recorded demo episode instead of random frames (said in its note).

    python benchmarks/table3.py --demos DEMOS [DAGGER ...]                 # quick (default), 113 min on 2 CPU cores
    python benchmarks/table3.py --preset smoke --output-dir /tmp/t3       # CI: seconds per stage, numbers meaningless
    python benchmarks/table3.py --preset paper --device cuda --dtype bfloat16 --model openvla/openvla-7b

Presets (override any with the flags):
- smoke: 3 SFT steps, one PPO update of one 8-step episode, 1 episode of 2 tasks (1 IND, 1 OOD) of 8
  steps per evaluation; falls back to the random "tiny" model when "tiny-maniskill" is not installed.
- quick: from the shipped "tiny-maniskill" base; SFT 6000 steps at batch 32 (lr 5e-4) on `--demos` (for the
  shipped base: its recipe's demos and DAgger directories), PPO 1200 env steps (10 updates of 2 envs x one
  60-step episode), 8 episodes per task on all 25 tasks. Measured on a 2-core x86_64 CPU (2026-12-03,
  docs/benchmarks.md): 113 min in all; each evaluation 8-12 min, SFT 31 min, PPO 105 s.
- paper: RLRC's settings: SFT 10k steps, PPO 0.6M env steps with 64 envs x 80-step episodes, 8 episodes
  per task; meant for a GPU and a real OpenVLA checkpoint.

Stage-level caching: every stage writes its result under `--output-dir` (pruned / SFT / PPO models as
`save_pretrained` directories, SFT and PPO checkpoints and metrics.jsonl, one JSON per evaluation and
profile), and a rerun skips any stage whose output exists, so an interrupted run resumes. Delete a file
or directory to recompute that stage. Outputs: table3.json, table3.md, fig9_stages.png, fig8_curves.png.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
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
    pyplot,
    quantized,
    ratio,
    recorded_episode,
    report_main,
    save_figure,
    stage_lines,
    stage_seconds,
    write_report,
)

from vla_compress import PPOConfig, VLACachePolicy, recover
from vla_compress.evaluation import format_success, success_summary
from vla_compress.recovery.metrics import read_metrics


@dataclasses.dataclass
class Table3Preset(Preset):
    """The shared stage sizes plus PPO's; the flags override model, steps, episodes and threads."""

    rl_steps: int = 1200  # PPO env steps (all envs together)
    minibatch_size: int = 60


PRESETS: dict[str, Table3Preset] = {
    "smoke": Table3Preset(**SMOKE, rl_steps=8, minibatch_size=8),
    # SFT as #24's pruning-subject check: 6,000 steps at batch 32 on the base recipe's demos and DAgger data
    "quick": Table3Preset(episodes=8, sft_steps=6000, sft_batch_size=32, sft_warmup=200),
    "paper": Table3Preset(**PAPER, rl_steps=600_000, minibatch_size=256),
}

PRUNE_RLRC = {"ratio": 0.9, "importance": "taylor", "method": "block"}
PRUNE_LLM_PRUNER = {"ratio": 0.2, "importance": "taylor", "method": "block"}
VLA_CACHE_NOTE = ("training-free: `VLACachePolicy(dense base)`, the authors' settings scaled to the model "
                  "(docs/benchmarks.md, VLA-Cache); same weights and bytes as the dense row (its per-environment "
                  "cache of visual keys/values is in the peak memory only)")

# RLRC paper, Table III (OpenVLA-7B, ManiSkill3 PutOnPlateInScene25, RTX 5880 Ada); None = not given.
PAPER_TABLE3 = [
    ("OpenVLA (dense)", 89.06, 57.81, 14.858, 169.0, 5.9),
    ("VLA-Cache", 87.50, 59.38, None, 125.0, None),
    ("4-bit", 85.93, 56.25, 4.971, None, None),
    ("LLM-Pruner 20%", 21.86, 14.06, None, None, None),
    ("RLRC", 90.62, 62.50, 3.856, 74.07, 13.5),
    ("RLRC-4bit", 85.93, 54.68, 1.772, 100.77, None),
]
PAPER_FIELDS = ("method", "ind_sr", "ood_sr", "memory_gb", "inference_ms", "throughput")
COLUMNS = ("ind_sr", "ood_sr", "memory_mb", "inference_ms", "throughput")


# ---- arguments ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = parser_for(__doc__, PRESETS, "outputs/table3")
    parser.add_argument("--rl-steps", type=int, default=None, help="PPO env steps in total")
    return parse_checked(parser, argv, ("sft_steps", "rl_steps", "episodes", "threads"))


def resolve_preset(args: argparse.Namespace) -> Table3Preset:
    preset = apply_flags(PRESETS[args.preset], args, ("model", "sft_steps", "rl_steps", "episodes", "threads"))
    unit = preset.num_envs * preset.episode_steps  # PPO rollouts hold whole episodes of every env
    if preset.rl_steps % unit:
        preset.rl_steps = max(unit, preset.rl_steps // unit * unit)
    preset.minibatch_size = min(preset.minibatch_size, unit)
    return preset


# ---- stages ------------------------------------------------------------------------------------------------
class Pipeline(Stages):
    """The stages of Table III with their cache paths under `out`."""

    def __init__(self, args: argparse.Namespace, preset: Table3Preset) -> None:
        super().__init__("table3", args, preset)

    def sft90(self):
        return self.sft("sft", lambda: self.pruned("pruned90", PRUNE_RLRC), run_dir=self.out / "sft")

    def ppo(self):
        preset = self.preset

        def build():
            config = PPOConfig(env="maniskill", tasks="ind", num_envs=preset.num_envs,
                               episode_steps=preset.episode_steps, image_size=128,
                               total_env_steps=preset.rl_steps, minibatch_size=preset.minibatch_size,
                               num_threads=preset.threads, output_dir=self.out / "ppo", resume=True,
                               seed=self.args.seed, device=self.args.device, checkpoint_every=1)
            return recover(self.sft90(), rl=config)

        return self.cached_model("rlrc", "PPO", build)


# ---- the table ---------------------------------------------------------------------------------------------
def vla_cache_note(measured: dict) -> str:
    """What the VLA-Cache row ran: its settings, the profile's frames, and how much it reused."""
    prof = measured["profile"]
    info = prof.get("policy_info") or {}
    reused = f"; it reused {info['reused_fraction']:.1%} of the visual tokens' layer computations while profiled" \
        if "reused_fraction" in info else ""
    return f"{VLA_CACHE_NOTE}; profiled on the first recorded demo episode ({prof.get('inputs')}){reused}"


def row(key: str, method: str, measured: dict | None, note: str = "") -> dict:
    """One table row: success rates in %, memory in MB (10^6 bytes), time in ms, throughput in actions/s."""
    values: dict[str, Any] = dict.fromkeys(COLUMNS)
    extra: dict[str, Any] = {}
    if measured is not None:
        ev, prof = measured["eval"], measured["profile"]
        values = {"ind_sr": percent(ev["ind_success_rate"]), "ood_sr": percent(ev["ood_success_rate"]),
                  "memory_mb": prof["model_bytes"] / 1e6, "inference_ms": prof["latency_ms_median"],
                  "throughput": prof["throughput_batch1"]}
        extra = {"inference_ms_p90": prof["latency_ms_p90"], "throughput_batch": prof["throughput_batch"],
                 "profile_batch_size": prof["batch_size"], "peak_memory_mb": prof["peak_memory_bytes"] / 1e6,
                 "peak_memory_kind": prof["peak_memory_kind"], "params": prof["params"],
                 "mean_return": ev["mean_return"], "episodes_per_task": ev["episodes_per_task"],
                 "success": success_summary(ev["episodes"])}
    status = "ok" if measured is not None else "not reproduced"
    return {"key": key, "method": method, "status": status, "note": note, **values, **extra}


def add_ratios(rows: list[dict]) -> None:
    """`ratios[column]` = value / dense value (1.0 for the dense row; None when undefined, e.g. dense = 0)."""
    dense = rows[0]
    for r in rows:
        r["ratios"] = {c: (None if r[c] is None else 1.0) if r is dense else ratio(r[c], dense[c]) for c in COLUMNS}


def _cell(r: dict, column: str, digits: int) -> str:
    value = r["ratios"][column]
    return fmt(r[column], digits) + ("" if value is None else f" (×{value:.2f})")


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [
        f"# Table III on our suite (preset `{result['preset']}`, base `{result['model']}`)", "",
        machine_line(result), "",
        (f"Success rates in % over {result['settings']['episodes']} episode(s) per task, with the 95% Wilson "
         "interval and (successes / episodes); memory = bytes of "
         "parameters and buffers (MB = 10^6 B); inference time = median latency of one `predict_action` at "
         "batch 1; throughput = actions/s at batch 1. (×r) = ratio to the dense row."), "",
        "| method | IND SR | OOD SR | memory (MB) | inference time (ms) | throughput (actions/s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | not reproduced | | | | |")
            continue
        ind, ood = (format_success(r["success"][k]["successes"], r["success"][k]["episodes"]) for k in ("ind", "ood"))
        lines.append(f"| {r['method']} | {ind} | {ood} | "
                     f"{_cell(r, 'memory_mb', 2)} | {_cell(r, 'inference_ms', 1)} | {_cell(r, 'throughput', 1)} |")
    lines += ["", *[f"- {r['method']}: {r['note']}" for r in rows if r["note"]], "",
              "## The paper's Table III (OpenVLA-7B, ManiSkill3 PutOnPlateInScene25, RTX 5880 Ada)", "",
              "| method | IND SR | OOD SR | memory (GB) | inference time (ms) | throughput (samples/s) |",
              "|---|---|---|---|---|---|"]
    for name, *values in PAPER_TABLE3:
        digits = (2, 2, 3, 2, 1)
        lines.append(f"| {name} | " + " | ".join(fmt(v, d) for v, d in zip(values, digits, strict=True)) + " |")
    lines += ["", *stage_lines(result)]
    return "\n".join(lines) + "\n"


# ---- figures -----------------------------------------------------------------------------------------------
def fig9(stages: dict[str, dict], path: Path) -> None:
    """Success per pipeline stage (IND and OOD bars)."""
    plt = pyplot()

    names = list(stages)
    ind = [percent(stages[n]["ind_success_rate"]) or 0.0 for n in names]
    ood = [percent(stages[n]["ood_success_rate"]) or 0.0 for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(x - 0.2, ind, 0.4, label="IND")
    ax.bar(x + 0.2, ood, 0.4, label="OOD")
    ax.set_xticks(x, names)
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Success per RLRC stage (cf. paper Fig. 9)")
    ax.legend()
    save_figure(fig, path)


def fig8(sft_dir: Path, ppo_dir: Path, path: Path) -> None:
    """SFT action loss and PPO episodic return from the metrics.jsonl logs."""
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    _curve(left, sft_dir, "losses/action_loss", "SFT step", "action-token loss", "SFT")
    _curve(right, ppo_dir, "charts/episodic_return", "env steps", "episodic return", "PPO")
    _curve(right, ppo_dir, "charts/success_rate", "env steps", "episodic return / success", "PPO", label="success")
    right.legend()
    fig.suptitle("Training curves (cf. paper Fig. 8)")
    save_figure(fig, path)


def _curve(ax, run_dir: Path, key: str, xlabel: str, ylabel: str, title: str, label: str | None = None) -> None:
    rows = read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    points = [(r["step"], r[key]) for r in rows if key in r]
    if points:
        ax.plot(*zip(*points, strict=True), marker="." if len(points) < 30 else None, label=label or key.split("/")[-1])
    else:
        ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)


# ---- main --------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    preset = resolve_preset(args)
    p = Pipeline(args, preset)
    p.setup()  # threads, output dir, and the smoke fallback before anything is cached

    base = p.base
    dense = p.measure("dense", base)
    vla_cache = p.measure("vla_cache", lambda: VLACachePolicy(base()),
                          profile_episode=lambda: recorded_episode(p.demos()))
    dense4 = p.measure("dense_4bit", quantized(base, 4))
    pruner20 = p.measure("llm_pruner20", lambda: p.pruned("pruned20", PRUNE_LLM_PRUNER))
    pruned90 = p.measure("pruned90", lambda: p.pruned("pruned90", PRUNE_RLRC))
    sft = p.measure("sft", p.sft90)
    rlrc = p.measure("rlrc", p.ppo)
    rlrc4 = p.measure("rlrc_4bit", quantized(p.ppo, 4))

    rows = [
        row("dense", f"dense base ({p.model_name})", dense),
        row("vla_cache", "VLA-Cache (dense base, training-free)", vla_cache, vla_cache_note(vla_cache)),
        row("dense_4bit", "dense + 4-bit (bnb NF4)", dense4),
        row("llm_pruner20", "LLM-Pruner 20% (block, Taylor, no recovery)", pruner20),
        row("rlrc", "RLRC (block 90% Taylor + SFT + PPO)", rlrc),
        row("rlrc_4bit", "RLRC-4bit (RLRC + bnb NF4)", rlrc4),
    ]
    add_ratios(rows)
    stages = {"dense": dense, "pruned 90%": pruned90, "+SFT": sft, "+PPO": rlrc}
    result = {
        "preset": args.preset, "model": p.model_name, "device": args.device, "dtype": args.dtype,
        "seed": args.seed, "settings": dataclasses.asdict(preset), "machine": machine(), "rows": rows,
        "stages": {name: {"ind_sr": percent(m["eval"]["ind_success_rate"]),
                          "ood_sr": percent(m["eval"]["ood_success_rate"])} for name, m in stages.items()},
        "stage_seconds": stage_seconds(args.output_dir),
        "paper_table3": [dict(zip(PAPER_FIELDS, r, strict=True)) for r in PAPER_TABLE3],
    }
    written = write_report(args.output_dir, "table3", result, markdown(result))
    fig9({name: m["eval"] for name, m in stages.items()}, args.output_dir / "fig9_stages.png")
    fig8(args.output_dir / "sft", args.output_dir / "ppo", args.output_dir / "fig8_curves.png")
    p.log(f"wrote {args.output_dir}/{written}, fig9_stages.png, fig8_curves.png")
    return result


main = report_main("table3", parse_args, run)


if __name__ == "__main__":
    main()
