"""What the paper benchmarks share: presets, flags, demo loading, stage caching, the machine, markdown.

`table1.py`, `table2.py`, `table3.py`, `fig2.py` and `fig4.py` build on this module and on the public
`vla_compress` API only.
Every stage writes its result under the output directory (models as `save_pretrained` directories, one
JSON per evaluation and profile) and a rerun skips any stage whose output exists, so an interrupted run
resumes; delete a file or directory to recompute that stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from report import (  # noqa: F401  (re-exported for the benchmarks)
    fmt,
    machine,
    machine_line,
    percent,
    ratio,
    report_main,
    table,
    versions,
    write_json,
    write_report,
)

from vla_compress import SFTConfig, load_vla, prune, quantize, recover
from vla_compress.data import DemoDataset, generate_demos
from vla_compress.data.libero_hdf5 import LiberoDataset
from vla_compress.deps import installed
from vla_compress.envs import TASKS_IND, TASKS_OOD
from vla_compress.envs.libero import INSTALL_HELP, LIBERO_SUITES
from vla_compress.evaluation import evaluate, profile
from vla_compress.pruning import hold_sparsity

SMOKE_TASKS = [TASKS_IND[0], TASKS_OOD[0]]
# Evaluation episode seed of every benchmark on our suite (train_base.py's too): `evaluate` seeds episode k of
# task t with EVAL_SEED * 1_000_003 + t * 1000 + k, apart from the demos' (seed 0: t * 10_000 + k), the
# base's layouts and DAgger rounds (seeds 100-200, x 1_000_000) and PPO's (1.5e9 and up).
EVAL_SEED = 1
SUITES = ("maniskill", *LIBERO_SUITES)
MANISKILL_NOTE = ("our ManiSkill3 suite (16 IND / 9 OOD tasks), not the paper's LIBERO: compare with its LIBERO "
                  "numbers for reference only (`--suite libero_spatial` / `libero_10` with `--demos` runs LIBERO)")
LIBERO_NOTE = ("LIBERO has no held-out split here: every task counts as IND and the OOD columns stay empty; no LIBERO "
               "demos can be downloaded or generated here, so calibration and SFT read the user's LIBERO HDF5 files "
               "given with --demos (vla_compress.data.libero_hdf5.LiberoDataset)")
LIBERO_DEMOS_HELP = ("needs --demos DIR with LIBERO HDF5 demonstrations (*_demo.hdf5, read with "
                     "vla_compress.data.libero_hdf5.LiberoDataset) for calibration and SFT: none can be downloaded or "
                     "generated here (see docs/libero.md)")


def suite_note(suite: str) -> str:
    """What the success columns mean for `suite`."""
    return MANISKILL_NOTE if suite == "maniskill" else LIBERO_NOTE


@dataclasses.dataclass
class Preset:
    """Sizes of the stages every table shares; `apply_flags` overrides them from the command line."""

    model: str = "tiny-maniskill"
    sft_steps: int = 1500
    episodes: int = 2  # evaluation episodes per task
    sft_batch_size: int = 8
    sft_lr: float = 5e-4
    sft_warmup: int = 50
    num_envs: int = 2  # evaluation (and PPO) workers
    episode_steps: int = 60  # evaluation (and PPO) episode length
    eval_tasks: str | list[str] = "all"
    libero_tasks: str | list[int] = "all"  # evaluation tasks with --suite libero_*: 'all' or indices 0..9
    libero_episode_steps: int | None = None  # None: the LIBERO suite's length (220 spatial, 520 libero_10)
    calibration_samples: int = 32
    demo_tasks: str | list[str] = "ind"
    demo_episodes: int = 10  # per task, when --demos is not given
    profile_batch: int = 8
    profile_warmup: int = 3
    profile_iters: int = 20
    threads: int | None = None


SMOKE = {"sft_steps": 3, "episodes": 1, "sft_batch_size": 2, "sft_warmup": 1, "num_envs": 1, "episode_steps": 8,
         "eval_tasks": SMOKE_TASKS, "calibration_samples": 4, "demo_tasks": [TASKS_IND[0]], "demo_episodes": 1,
         "profile_batch": 2, "profile_warmup": 1, "profile_iters": 3, "threads": 1, "libero_tasks": [0],
         "libero_episode_steps": 8}
PAPER = {"model": "openvla/openvla-7b", "sft_steps": 10_000, "episodes": 8, "sft_batch_size": 32, "sft_lr": 2e-4,
         "sft_warmup": 200, "num_envs": 64, "episode_steps": 80, "calibration_samples": 128, "demo_episodes": 40,
         "profile_batch": 8, "profile_warmup": 5, "profile_iters": 50}


@dataclasses.dataclass
class SweepPreset(Preset):
    """The shared stage sizes plus the pruning ratios of a sparsity sweep (Table II, Figs. 2 and 4)."""

    ratios: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)


SWEEP_PRESETS: dict[str, SweepPreset] = {
    "smoke": SweepPreset(**SMOKE, ratios=(0.5, 0.9)),
    "quick": SweepPreset(),
    "paper": SweepPreset(**PAPER, ratios=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)),
}


# ---- arguments ---------------------------------------------------------------------------------------------
def parser_for(doc: str | None, presets: Sequence[str], output_dir: str,
               suite: bool = False) -> argparse.ArgumentParser:
    """The flags every benchmark takes; add benchmark-specific ones to the returned parser."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(presets), default="quick")
    parser.add_argument("--model", default=None, help="base policy: preset, directory or hub id")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="e.g. float32, bfloat16 (default: as stored)")
    parser.add_argument("--sft-steps", type=int, default=None)
    parser.add_argument("--episodes", type=int, default=None, help="evaluation episodes per task")
    parser.add_argument("--seed", type=int, default=0, help="demos generated here, calibration, SFT, PPO")
    parser.add_argument("--eval-seed", type=int, default=None,
                        help=f"evaluation episodes (default {EVAL_SEED} on maniskill: no demo, layout or DAgger seed "
                             "of the base's recipe nor the demos generated here at --seed 0; 0 on LIBERO: "
                             "OpenVLA's init-state protocol)")
    parser.add_argument("--output-dir", type=Path, default=Path(output_dir))
    parser.add_argument("--demos", type=Path, nargs="+", default=None,
                        help="demo directory (default: generated into <output-dir>/demos); several are read in order "
                             "with the first one's norm stats, e.g. a base recipe's demos and DAgger rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    if suite:
        parser.add_argument("--suite", choices=SUITES, default="maniskill",
                            help="evaluation suite (libero_10 is the paper's LIBERO-Long); a LIBERO suite "
                                 + LIBERO_DEMOS_HELP)
    return parser


def add_ratios_flag(parser: argparse.ArgumentParser, help: str = "pruning ratios, each in (0, 1)") -> None:
    """`--ratios`, checked and sorted by `parse_checked`."""
    parser.add_argument("--ratios", type=float, nargs="+", default=None, help=help)


def parse_checked(parser: argparse.ArgumentParser, argv: list[str] | None,
                  positive: Sequence[str]) -> argparse.Namespace:
    """Parse `argv`; flags named in `positive` must be >= 1 when given; a LIBERO `--suite` needs `--demos`;
    `--ratios` (see `add_ratios_flag`) must lie in (0, 1) and comes back sorted without repeats."""
    args = parser.parse_args(argv)
    for name in positive:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    suite = getattr(args, "suite", "maniskill")
    if suite != "maniskill":
        if args.demos is None:
            parser.error(f"--suite {suite} {LIBERO_DEMOS_HELP}")
        if len(args.demos) > 1:
            parser.error(f"--suite {suite}: give one --demos directory of LIBERO HDF5 files, got {len(args.demos)}")
        if not installed("libero"):
            parser.error(f"--suite {suite}: {INSTALL_HELP}")
    if getattr(args, "eval_seed", 0) is None:  # parser_for's flag; ppo_tasks.py has its own
        args.eval_seed = EVAL_SEED if suite == "maniskill" else 0
    generates_demos = suite == "maniskill" and hasattr(args, "demos") and args.demos is None
    if generates_demos and args.eval_seed == args.seed:
        parser.error(f"--eval-seed ({args.eval_seed}) must differ from --seed: the demos generated here use "
                     "--seed's episode layouts, and an evaluation on them would score training data")
    ratios = getattr(args, "ratios", None)
    if ratios is not None:
        if not all(0 < r < 1 for r in ratios):
            parser.error(f"--ratios must be in (0, 1), got {ratios}")
        args.ratios = tuple(sorted(set(ratios)))
    return args


def apply_flags(preset: Preset, args: argparse.Namespace, names: Sequence[str]) -> Preset:
    """A copy of `preset` with the flags in `names` that were given."""
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return dataclasses.replace(preset, **given)


# ---- files and logs ----------------------------------------------------------------------------------------
def stage_seconds(out: Path) -> dict[str, float]:
    """Seconds of each cached stage, as recorded when it ran."""
    seconds = {}
    for path in sorted([*out.glob("models/*.stage.json"), *out.glob("eval/*.json"), *out.glob("profile/*.json")]):
        data = json.loads(path.read_text())
        name = path.name.removesuffix(".stage.json").removesuffix(".json")
        seconds[f"{path.parent.name}/{name}"] = float(data.get("seconds", float("nan")))
    return seconds


# ---- stages ------------------------------------------------------------------------------------------------
class Stages:
    """Cached stages under `args.output_dir`: base model, demos, pruning, SFT, quantization, evaluation, profile."""

    def __init__(self, name: str, args: argparse.Namespace, preset: Preset) -> None:
        self.name, self.args, self.preset, self.out = name, args, preset, args.output_dir
        self.model_name = preset.model
        self.suite: str = getattr(args, "suite", "maniskill")
        self._demos: DemoDataset | LiberoDataset | None = None

    def log(self, message: str) -> None:
        print(f"[{self.name} {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def setup(self) -> None:
        """Set threads, create the output directory and resolve the smoke fallback before anything is cached."""
        if self.preset.threads is not None:
            torch.set_num_threads(self.preset.threads)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log(f"preset {self.args.preset}: {dataclasses.asdict(self.preset)}")
        self.base()

    def cached_json(self, path: Path, stage: str, compute: Callable[[], dict]) -> dict:
        """Load `path` if it exists, else compute, time and write it."""
        if path.exists():
            self.log(f"{stage}: cached ({path})")
            return json.loads(path.read_text())
        self.log(f"{stage}: running")
        start = time.time()
        result = compute()
        result["seconds"] = time.time() - start
        write_json(path, result)
        self.log(f"{stage}: done in {result['seconds']:.1f} s")
        return result

    def cached_model(self, key: str, stage: str, build: Callable[[], Any]):
        """Load `<out>/models/<key>` if complete, else build the model and `save_pretrained` it there."""
        path = self.out / "models" / key
        if (path / "config.json").exists():
            self.log(f"{stage}: cached ({path})")
            return load_vla(path, device=self.args.device, dtype=self.args.dtype)
        self.log(f"{stage}: running")
        start = time.time()
        model = build()
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tmp.replace(path)
        write_json(path.with_name(path.name + ".stage.json"), {"seconds": time.time() - start})
        self.log(f"{stage}: done in {time.time() - start:.1f} s")
        return model

    # models
    def base(self):
        """The dense base; the smoke preset falls back to the random "tiny" model without tiny-maniskill."""
        try:
            return load_vla(self.model_name, device=self.args.device, dtype=self.args.dtype)
        except ValueError:
            if self.args.preset != "smoke" or self.model_name != "tiny-maniskill":
                raise
            warnings.warn("tiny-maniskill is not installed; the smoke run falls back to the random 'tiny' model",
                          stacklevel=2)
            print("WARNING: tiny-maniskill is not installed; smoke run uses the random 'tiny' model", flush=True)
            self.model_name = "tiny"
            return load_vla("tiny", device=self.args.device, dtype=self.args.dtype)

    def demos(self) -> DemoDataset | LiberoDataset:
        """`--demos` (LIBERO HDF5 files for a LIBERO suite), else ManiSkill demos generated into <out>/demos."""
        if self._demos is None and self.suite != "maniskill":
            self._demos = LiberoDataset(self.args.demos[0])
        if self._demos is None:
            paths = self.args.demos or [self.out / "demos"]
            if self.args.demos is None and not (paths[0] / "norm_stats.json").exists():
                self.log(f"demos: generating into {paths[0]}")
                generate_demos(paths[0], tasks=self.preset.demo_tasks, episodes_per_task=self.preset.demo_episodes,
                               image_size=128, seed=self.args.seed)
            self._demos = DemoDataset(paths)
        return self._demos

    def calibration(self) -> list[dict]:
        data = self.demos()
        rng = np.random.default_rng(self.args.seed)
        picks = rng.choice(len(data), size=min(self.preset.calibration_samples, len(data)), replace=False)
        return [data[int(i)] for i in picks]

    def pruned(self, key: str, settings: dict, calibrate: bool = True):
        """`prune(base, **settings)` with calibration demos unless not `calibrate` (data-free criteria such as
        block-wise "l2"); unstructured masks are re-armed after a reload."""
        torch.manual_seed(self.args.seed)
        model = self.cached_model(key, f"prune {key}", lambda: prune(
            self.base(), calibration=self.calibration() if calibrate else None, **settings))
        if settings.get("method") in ("magnitude", "wanda"):
            hold_sparsity(model)  # a reloaded checkpoint regains its masks from its zero pattern
        return model

    def sft(self, key: str, source: Callable[[], Any], run_dir: Path | None = None):
        """`recover(source(), sft=SFTConfig(...))` on the demos; checkpoints and metrics in `run_dir`."""
        preset = self.preset

        def build():
            config = SFTConfig(data=self.demos(), steps=preset.sft_steps, batch_size=preset.sft_batch_size,
                               learning_rate=preset.sft_lr, warmup_steps=min(preset.sft_warmup, preset.sft_steps),
                               output_dir=run_dir or self.out / "sft" / key, resume=True, seed=self.args.seed,
                               device=self.args.device, log_every=min(10, preset.sft_steps),
                               checkpoint_every=max(1, min(200, preset.sft_steps)), eval_every=preset.sft_steps)
            return recover(source(), sft=config)

        return self.cached_model(key, f"SFT {key}", build)

    # measurements
    def measure(self, key: str, load: Callable[[], Any], evaluation: bool = True, profiling: bool = True,
                sparsity: bool = False, profile_episode: Callable[[], dict] | None = None) -> dict:
        """Evaluation, profile and (if `sparsity`) the LLM's zero fraction of one model, each cached as JSON.

        `profile_episode` gives a recorded episode for `profile(episode=...)` (a stateful policy such as
        VLA-Cache is profiled on consecutive frames); it is called only when the profile is computed."""
        holder: dict[str, Any] = {}

        def model():
            if "model" not in holder:
                holder["model"] = load()
            return holder["model"]

        preset = self.preset
        result: dict[str, Any] = {}
        if evaluation:
            libero = self.suite != "maniskill"
            result["eval"] = self.cached_json(self.out / "eval" / f"{key}.json", f"evaluate {key}", lambda: evaluate(
                model(), suite=self.suite, tasks=preset.libero_tasks if libero else preset.eval_tasks,
                episodes_per_task=preset.episodes, num_envs=preset.num_envs, seed=self.args.eval_seed, image_size=128,
                max_episode_steps=preset.libero_episode_steps if libero else preset.episode_steps,
                progress=False).to_dict())
        if profiling:
            result["profile"] = self.cached_json(
                self.out / "profile" / f"{key}.json", f"profile {key}", lambda: profile(
                    model(), batch_size=preset.profile_batch, warmup=preset.profile_warmup,
                    iters=preset.profile_iters, image_size=128, seed=self.args.seed,
                    episode=profile_episode() if profile_episode is not None else None).to_dict())
        if sparsity:
            result["sparsity"] = self.cached_json(self.out / "sparsity" / f"{key}.json", f"sparsity {key}",
                                                  lambda: {"llm_sparsity": llm_sparsity(model())})
        holder.clear()
        return result


def recorded_episode(data: DemoDataset) -> dict:
    """The first episode of a demo dataset as `{"images": uint8 [T, H, W, 3], "instruction": str}`, the
    consecutive frames `profile(episode=...)` replays."""
    first = data[0]
    frames = [first["image"]]
    for i in range(1, len(data)):
        item = data[i]
        if (item["task"], item["episode"]) != (first["task"], first["episode"]):
            break
        frames.append(item["image"])
    return {"images": np.stack(frames), "instruction": first["instruction"]}


# the structured pruning methods of the sparsity sweeps (Table II's figures, fig2.py, fig4.py): name, prune() settings
SWEEP_METHODS = {"llm_pruner": ("LLM-Pruner (block, Taylor)", {"method": "block", "importance": "taylor"}),
                 "flap": ("FLAP", {"method": "flap"})}


def key_of(method: str, sparsity: float) -> str:
    """The cache key of `method` at pruning ratio `sparsity`, e.g. llm_pruner50 (shared by table2, fig2 and fig4)."""
    return f"{method}{round(sparsity * 100):02d}"


def quantized(load: Callable[[], Any], bits: int) -> Callable[[], Any]:
    """A loader of `load()` quantized with bitsandbytes: LLM.int8 for 8 bits, NF4 for 4 bits."""
    if bits == 8:
        return lambda: quantize(load(), bits=8, method="bnb")
    return lambda: quantize(load(), bits=4, method="bnb", quant_type="nf4")


def llm_sparsity(model: torch.nn.Module) -> float:
    """Zero fraction of the 2-D weights of the language model's decoder layers."""
    zeros = total = 0
    for name, param in model.language_model.named_parameters():
        if ".layers." in f".{name}" and param.ndim == 2:
            zeros += int((param == 0).sum())
            total += param.numel()
    return zeros / total if total else 0.0


# ---- values and markdown -----------------------------------------------------------------------------------
def stage_lines(result: dict) -> list[str]:
    return ["## Stage times (s, from the run that computed each stage)", "",
            *table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in result["stage_seconds"].items()])]


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Lay out `fig`, write it to `path` as a 120-dpi PNG and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
