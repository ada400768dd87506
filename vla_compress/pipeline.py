"""RLRC end to end: measure the dense model, prune, recover (SFT, optional PPO), quantize, measure every stage.

    from vla_compress.pipeline import RLRCConfig, run_rlrc

    report = run_rlrc("tiny-maniskill", RLRCConfig(sft_steps=500, episodes=1, tasks_per_split=4), "rlrc-tiny")
    print(report.markdown())

Every stage is evaluated in the ManiSkill3 suite (IND / OOD success with 95% Wilson intervals) and
profiled (`vla_compress.evaluation.profile`). Layout of `output_dir`:

    rlrc_config.json        the run's settings; a rerun with other settings is refused
    demos/                  generated demonstrations (only when `config.demos` is None)
    dense/stage.json        measurements of the input model (its weights are not copied)
    pruned/, sft/, ppo/, 4bit/ (or 8bit/)
                            `save_pretrained` output, then `stage.json` (written atomically, last)
    runs/sft/, runs/ppo/    training checkpoints and metrics.jsonl (an interrupted stage resumes from them)
    rlrc.json, rlrc.md, rlrc.png

A stage is done when its `stage.json` exists; a rerun skips done stages, so an interrupted run resumes.
Each stage starts from the previous stage's saved directory, so a resumed run trains what a fresh one does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_compress.data.demos import atomic_write_json
from vla_compress.deps import installed
from vla_compress.envs.tasks import TASKS_IND, TASKS_OOD, resolve_tasks
from vla_compress.evaluation import evaluate, format_success, profile, success_summary, wilson_interval
from vla_compress.recovery.validation import require_int

BITS = (4, 8, 16)  # 16: no quantization
EVAL_IMAGE_SIZE = 128  # the suite's camera frames
# Settings of the training stages that the pipeline owns: given elsewhere in RLRCConfig, or fixed.
SFT_OWNED = {"data": "demos", "steps": "sft_steps", "output_dir": None, "resume": None, "device": "device",
             "progress": "progress", "seed": "seed"}
RL_OWNED = {"total_env_steps": "ppo_steps", "output_dir": None, "resume": None, "device": "device",
            "progress": "progress", "seed": "seed"}
# SFT and PPO settings sized for small policies on a CPU (the benchmarks' `quick` preset); `sft:` / `rl:` override.
SFT_DEFAULTS: dict[str, Any] = {"batch_size": 8, "learning_rate": 5e-4, "warmup_steps": 50}
RL_DEFAULTS: dict[str, Any] = {"tasks": "ind", "num_envs": 2, "minibatch_size": 60, "image_size": EVAL_IMAGE_SIZE,
                               "checkpoint_every": 1}


@dataclass
class RLRCConfig:
    """Settings of `run_rlrc`. Defaults: block pruning 90% (Taylor), 500 SFT steps, no PPO, 4-bit bnb NF4,
    2 evaluation episodes on each of the 25 tasks.

    `sft` and `rl` hold further `SFTConfig` / `PPOConfig` fields (e.g. `{"batch_size": 32, "learning_rate": 2e-4}`
    for openvla-7b); the fields in `SFT_OWNED` / `RL_OWNED` are set from this config instead.
    """

    RESUME_MAY_CHANGE = ("device", "num_envs", "progress")

    ratio: float = 0.9  # fraction of heads / MLP channels removed per pruned decoder layer
    importance: str = "taylor"  # block-pruning criterion (`prune`'s importance)
    calibration_samples: int = 32  # demo samples for the Taylor scores (spread evenly over the demos)
    sft_steps: int = 500
    ppo_steps: int = 0  # PPO env steps in total; 0 skips PPO
    bits: int = 4  # 4 or 8 (quantize the recovered model), 16 (no quantization)
    quant_method: str = "bnb"  # bnb, gptq (calibrated on the demos), quanto or aten
    episodes: int = 2  # evaluation episodes per task
    tasks: str | list[str] = "all"  # evaluation tasks: 'ind', 'ood', 'all', a task id or a list of ids
    tasks_per_split: int | None = None  # evaluate only the first N IND and first N OOD tasks of `tasks`
    episode_steps: int = 60  # evaluation (and PPO) episode length
    num_envs: int = 1  # parallel simulator workers of the evaluations
    demos: str | Path | None = None  # demo directory (`vla-compress demos`); None: generate into output_dir/demos
    demo_tasks: str | list[str] = "ind"
    demo_episodes: int = 2  # per demo task, when generating
    profile_batch: int = 8
    profile_iters: int = 20
    device: str = "cpu"
    dtype: str | None = None  # None: the stored dtype
    seed: int = 0  # demos generated here, calibration, SFT, PPO
    # evaluation layouts: `evaluate`'s episode seeds at `seed` include the demos' of `generate_demos` at the
    # same seed, so the default differs (1: no demo, DAgger or PPO seed of this package's recipes)
    eval_seed: int = 1
    sft: dict[str, Any] = field(default_factory=dict)
    rl: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def validate(self, output_dir: str | Path = "rlrc-out") -> None:
        """Raise ValueError (ImportError for a missing backend) for settings that cannot run; does no work.

        `output_dir` is where the run will write (its training stages' directories are checked)."""
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 < self.ratio < 1:
            raise ValueError(f"ratio={self.ratio!r} is out of range; allowed: a number strictly between 0 and 1")
        if self.bits not in BITS or isinstance(self.bits, bool):
            raise ValueError(f"bits={self.bits!r} is not supported; allowed: {BITS} (16 = no quantization)")
        for name in ("episodes", "sft_steps", "calibration_samples", "episode_steps", "num_envs", "demo_episodes",
                     "profile_batch", "profile_iters"):
            require_int(name, getattr(self, name), 1)
        require_int("ppo_steps", self.ppo_steps, 0)
        require_int("seed", self.seed, 0)
        require_int("eval_seed", self.eval_seed, 0)
        if self.demos is None and self.eval_seed == self.seed:
            raise ValueError(f"eval_seed ({self.eval_seed}) must differ from seed: the demos generated here use "
                             "seed's episode layouts, and an evaluation on them would score training data")
        require_int("tasks_per_split", self.tasks_per_split, 1, optional=True)
        self.eval_tasks()
        resolve_tasks(self.demo_tasks)
        from vla_compress.pruning import CRITERIA

        if self.importance not in CRITERIA:
            raise ValueError(f"importance={self.importance!r} is unknown; allowed: {sorted(CRITERIA)}")
        from vla_compress.modeling import resolve_dtype

        resolve_dtype(self.dtype)
        if self.bits != 16:
            from vla_compress.quantization import require_method

            require_method(self.quant_method, "quant_method", hint=" (or bits=16: no quantization)")
        runs = Path(output_dir).expanduser() / "runs"
        self.sft_config(data=[{}], output_dir=runs / "sft").validate()  # fields and values; the demos come later
        if self.ppo_steps:
            self.ppo_config(runs / "ppo").validate()
        if not installed("mani_skill"):
            raise ImportError("the pipeline evaluates every stage in the ManiSkill3 simulator: "
                              "pip install vla-compress[sim]")

    def eval_tasks(self) -> list[str]:
        """The evaluation tasks: `tasks`, cut to the first `tasks_per_split` of each split when set."""
        names = resolve_tasks(self.tasks)
        if self.tasks_per_split is None:
            return names
        n = self.tasks_per_split
        return [t for t in TASKS_IND if t in names][:n] + [t for t in TASKS_OOD if t in names][:n]

    def sft_config(self, data, output_dir: Path):
        """The SFT stage's `SFTConfig`: `SFT_DEFAULTS`, then `sft`, then the fields this config owns."""
        from vla_compress.recovery import SFTConfig

        values = {**SFT_DEFAULTS, **_section(SFTConfig, self.sft, SFT_OWNED, "sft")}
        values["warmup_steps"] = min(values["warmup_steps"], self.sft_steps)
        values.setdefault("log_every", min(10, self.sft_steps))
        values.setdefault("checkpoint_every", min(100, self.sft_steps))
        values.setdefault("eval_every", self.sft_steps)
        return SFTConfig(data=data, steps=self.sft_steps, output_dir=output_dir, resume=True, device=self.device,
                         progress=self.progress, seed=self.seed, **values)

    def ppo_config(self, output_dir: Path):
        """The PPO stage's `PPOConfig`: `RL_DEFAULTS`, then `rl`, then the fields this config owns."""
        from vla_compress.recovery import PPOConfig

        values = {"episode_steps": self.episode_steps, **RL_DEFAULTS,
                  **_section(PPOConfig, self.rl, RL_OWNED, "rl")}
        if "minibatch_size" not in self.rl:  # at most one rollout of every env
            values["minibatch_size"] = min(values["minibatch_size"], values["num_envs"] * values["episode_steps"])
        return PPOConfig(total_env_steps=self.ppo_steps, output_dir=output_dir, resume=True,
                         device=self.device, progress=self.progress, seed=self.seed, **values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["demos"] = None if self.demos is None else str(self.demos)
        return json.loads(json.dumps(data, default=str))


# the sections of a config file: (the config class whose fields they hold, an example)
SECTIONS = {"sft": ("SFTConfig", "steps: 100"), "rl": ("PPOConfig", "total_env_steps: 1000")}


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML config file (`recover --config`, `rlrc --config`) as a mapping whose `sft:` / `rl:` sections,
    when given, are mappings too; ValueError naming `config` otherwise."""
    import yaml

    if not path.is_file():
        raise ValueError(f"config={str(path)!r} is not a file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"config={str(path)!r} is not valid YAML: {getattr(error, 'problem', None) or error}"
                         f"{where}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config={str(path)!r} holds a {type(data).__name__}; allowed: a mapping of settings "
                         "(sections sft:, rl:)")
    for section, (fields, example) in SECTIONS.items():
        value = data.get(section)
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"config={str(path)!r}: {section} is a {type(value).__name__}; allowed: a mapping of "
                             f"{fields} fields, e.g. {section}: {{{example}}}")
    return data


def config_from_yaml(path: str | Path | None, **overrides: Any) -> RLRCConfig:
    """An `RLRCConfig` from a YAML file and `overrides` (None values are ignored, so the file's stay).

    The file holds `RLRCConfig` fields at the top level plus, as `vla-compress recover --config` reads
    them, an `sft:` section (`SFTConfig` fields; `data` is the demo directory, `steps` the SFT steps) and
    an `rl:` section (`PPOConfig` fields; `total_env_steps` is the PPO steps). Unknown keys are an error.
    """
    data = read_config_file(Path(path)) if path is not None else {}
    sft, rl = dict(data.pop("sft", None) or {}), dict(data.pop("rl", None) or {})
    for section, key, target in ((sft, "data", "demos"), (sft, "steps", "sft_steps"), (rl, "total_env_steps",
                                                                                        "ppo_steps")):
        if key in section:
            data[target] = section.pop(key)
    allowed = {f.name for f in dataclasses.fields(RLRCConfig)} - {"sft", "rl"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"config has unknown keys {unknown}; allowed: {sorted(allowed)}, sft, rl")
    given = {key: value for key, value in overrides.items() if value is not None}
    sft.update(given.pop("sft", {}))
    rl.update(given.pop("rl", {}))
    return RLRCConfig(**{**data, **given}, sft=sft, rl=rl)


# ---- results -----------------------------------------------------------------------------------------------
@dataclass
class StageResult:
    """What one stage measured; `stage.json` holds it. Success counts pool the episodes of each split."""

    name: str  # directory under output_dir: dense, pruned, sft, ppo, 4bit, 8bit
    label: str
    path: str | None  # the save_pretrained directory; None for the dense input
    ind_successes: int
    ind_episodes: int
    ood_successes: int
    ood_episodes: int
    params: int
    model_bytes: int
    latency_ms: float  # median of one predict_action at batch 1 (= one action)
    actions_per_s: float  # throughput at the profile's batch size
    profile_batch: int
    seconds: dict[str, float]  # build (prune / train / quantize), evaluate, profile
    evaluation: dict[str, Any] = field(default_factory=dict)  # EvalResult.to_dict()
    profile: dict[str, Any] = field(default_factory=dict)  # ProfileResult.to_dict()

    def rate(self, split: str) -> float | None:
        successes, episodes = self._counts(split)
        return successes / episodes if episodes else None

    def interval(self, split: str) -> tuple[float, float] | None:
        successes, episodes = self._counts(split)
        return wilson_interval(successes, episodes) if episodes else None

    def _counts(self, split: str) -> tuple[int, int]:
        return (self.ind_successes, self.ind_episodes) if split == "ind" else (self.ood_successes,
                                                                              self.ood_episodes)


@dataclass
class RLRCReport:
    """Every stage's measurements and the run's settings; `markdown()` is the table `write` saves."""

    model: str
    config: dict[str, Any]
    tasks: list[str]  # the evaluation tasks
    stages: list[StageResult]
    demos: dict[str, Any]  # path, episodes, samples, generated, seconds
    seconds: float  # wall time of this call of run_rlrc (skipped stages cost nothing)
    machine: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for stage, result in zip(data["stages"], self.stages):
            stage.update(ind_rate=result.rate("ind"), ood_rate=result.rate("ood"),
                         ind_interval=result.interval("ind"), ood_interval=result.interval("ood"))
        return data

    def header(self) -> str:
        """What was run, in words: the settings behind the table."""
        c = self.config
        n_ind, n_ood = sum(t in TASKS_IND for t in self.tasks), sum(t in TASKS_OOD for t in self.tasks)
        subset = f" (the first {c['tasks_per_split']} of each split)" if c["tasks_per_split"] else ""
        ppo = f"PPO {c['ppo_steps']:,} env steps" if c["ppo_steps"] else "no PPO"
        quant = "no quantization" if c["bits"] == 16 else f"{c['bits']}-bit {c['quant_method']}"
        demos = self.demos
        m = self.machine
        return (f"RLRC on `{self.model}`: block pruning {c['ratio']:.0%} ({c['importance']}, "
                f"{c['calibration_samples']} calibration samples), SFT {c['sft_steps']} steps on {demos['episodes']} "
                f"demo episode(s), {ppo}, {quant}. Evaluated on {n_ind} of 16 IND and {n_ood} of 9 OOD tasks{subset}, "
                f"{c['episodes']} episode(s) per task of {c['episode_steps']} steps; success in % with 95% Wilson "
                f"intervals (successes / episodes). MB = 10^6 bytes of parameters and buffers; ms / action = median "
                f"latency of one predict_action at batch 1; actions/s at batch {c['profile_batch']}; (×r) = ratio to "
                f"dense. Device {m['device']} ({m['dtype']}), {m['cpu_count']} CPU cores, {m['torch_threads']} torch "
                f"thread(s){', ' + m['cuda'] if m['cuda'] else ''}; this run took {self.seconds / 60:.1f} min.")

    def markdown(self) -> str:
        """The stage table as markdown, headed by what was run."""
        dense = self.stages[0]
        lines = [self.header(), "",
                 "| stage | IND success % | OOD success % | parameters | MB | ms / action | actions/s |",
                 "|---|---|---|---|---|---|---|"]
        for s in self.stages:
            lines.append(
                f"| {s.label} | {_success(s, 'ind')} | {_success(s, 'ood')} | "
                f"{s.params / 1e6:.2f} M{_times(s.params, dense.params)} | "
                f"{s.model_bytes / 1e6:.1f}{_times(s.model_bytes, dense.model_bytes)} | "
                f"{s.latency_ms:.1f}{_times(s.latency_ms, dense.latency_ms)} | "
                f"{s.actions_per_s:.1f}{_times(s.actions_per_s, dense.actions_per_s)} |")
        return "\n".join(lines) + "\n"

    def write(self, output_dir: str | Path) -> list[Path]:
        """rlrc.json, rlrc.md and rlrc.png in `output_dir`; returns their paths."""
        out = Path(output_dir)
        paths = [out / "rlrc.json", out / "rlrc.md", out / "rlrc.png"]
        atomic_write_json(paths[0], self.to_dict())
        paths[1].write_text(self.markdown())
        plot_stages(self.stages, paths[2])
        return paths


def _success(stage: StageResult, split: str) -> str:
    return format_success(*stage._counts(split))


def _times(value: float, dense: float) -> str:
    return "" if not dense else f" (×{value / dense:.2f})"


def plot_stages(stages: list[StageResult], path: Path) -> None:
    """A PNG: success per stage with Wilson error bars, and MB and ms per action per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s in stages]
    x = np.arange(len(stages))
    fig, (ax_sr, ax_mb, ax_ms) = plt.subplots(1, 3, figsize=(12, 3.6))
    for offset, split, label in ((-0.2, "ind", "IND"), (0.2, "ood", "OOD")):
        rates = [100 * (s.rate(split) or 0.0) for s in stages]
        bounds = [s.interval(split) or (0.0, 0.0) for s in stages]
        errors = [[max(0.0, r - 100 * lo) for r, (lo, _) in zip(rates, bounds)],
                  [max(0.0, 100 * hi - r) for r, (_, hi) in zip(rates, bounds)]]
        ax_sr.bar(x + offset, rates, 0.4, yerr=errors, capsize=3, label=label)
    ax_sr.set(xticks=x, xticklabels=names, ylim=(0, 100), ylabel="success % (95% Wilson)", title="success")
    ax_sr.legend()
    ax_mb.bar(x, [s.model_bytes / 1e6 for s in stages], color="tab:green")
    ax_mb.set(xticks=x, xticklabels=names, ylabel="MB", title="model size")
    ax_ms.bar(x, [s.latency_ms for s in stages], color="tab:red")
    ax_ms.set(xticks=x, xticklabels=names, ylabel="ms per action (batch 1)", title="latency")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- the run -----------------------------------------------------------------------------------------------
Build = Callable[[Any], Any]  # the previous stage's model -> this stage's model


def run_rlrc(model_or_name: Any, config: RLRCConfig | None = None,
             output_dir: str | Path = "rlrc-out") -> RLRCReport:
    """Run RLRC on a model (or anything `load_vla` takes) and measure every stage; see the module doc.

    Every argument is checked before any work: the config (`RLRCConfig.validate`), that `output_dir`
    can be written and holds no run with other settings, that `config.demos` holds episodes, and the
    model name. A model passed in is pruned in place, as `prune` does. Writes rlrc.json / .md / .png.
    """
    from vla_compress.recovery.checkpoint import model_fingerprint

    config = config or RLRCConfig()
    out = Path(output_dir).expanduser()
    config.validate(out)
    check_writable(out)
    demos = open_demos(config.demos) if config.demos is not None else None
    started = time.perf_counter()
    base, name = _load_base(model_or_name, config)
    identity = {"model": name, "fingerprint": model_fingerprint(base), "config": config.to_dict()}
    check_same_run(out, identity, config)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "rlrc_config.json", identity)

    results: list[StageResult] = []
    previous: Callable[[], Any] = lambda: base  # noqa: E731  (pruning starts from the dense input)
    envs = SharedEnv(config)
    try:
        demos, demo_info = _demos(demos, config, out, envs)
        stages = _stages(config, demos, spread_samples(demos, config.calibration_samples), out)
        for number, (stage, label, build) in enumerate(stages, start=1):
            _say(config, f"stage {number}/{len(stages)} {stage}: {label}")
            results.append(_stage(config, out, stage, label, build, previous, envs))
            if build is not None:
                previous = _loader(out / stage, config)  # the next stage starts from this one's saved directory
    finally:
        envs.close()
    report = RLRCReport(model=name, config=config.to_dict(), tasks=config.eval_tasks(), stages=results,
                        demos=demo_info, seconds=time.perf_counter() - started, machine=_machine(config))
    report.write(out)
    return report


def _stages(config: RLRCConfig, demos, samples: list[dict], out: Path) -> list[tuple[str, str, Build | None]]:
    """(directory name, label, build) of each stage in order; the dense stage builds nothing."""
    from vla_compress import prune, quantize, recover

    stages: list[tuple[str, str, Build | None]] = [("dense", "dense", None)]
    stages.append(("pruned", f"pruned {config.ratio:.0%} (block, {config.importance})", lambda model: prune(
        model, config.ratio, method="block", importance=config.importance, calibration=samples)))
    stages.append(("sft", f"+ SFT ({config.sft_steps} steps)", lambda model: recover(
        model, sft=config.sft_config(demos, out / "runs" / "sft"))))
    if config.ppo_steps:
        stages.append(("ppo", f"+ PPO ({config.ppo_steps:,} env steps)", lambda model: recover(
            model, rl=config.ppo_config(out / "runs" / "ppo"))))
    if config.bits != 16:
        calibration = samples if config.quant_method == "gptq" else None
        stages.append((f"{config.bits}bit", f"+ {config.bits}-bit ({config.quant_method})", lambda model: quantize(
            model, config.bits, method=config.quant_method, calibration=calibration)))
    return stages


def _stage(config: RLRCConfig, out: Path, stage: str, label: str, build: Build | None,
           previous: Callable[[], Any], envs: SharedEnv) -> StageResult:
    """One stage: skipped when its stage.json exists; else built from `previous()` (unless already saved),
    saved with `save_pretrained`, evaluated, profiled, and its stage.json written last."""
    path = out / stage
    if (path / "stage.json").exists():
        _say(config, f"  done before ({path / 'stage.json'}), skipped")
        return StageResult(**json.loads((path / "stage.json").read_text()))
    seconds: dict[str, float] = {}
    if build is None:  # the dense input: measured, not copied
        model, saved = previous(), None
    elif (path / "build.json").exists():  # saved by an interrupted run before its measurements
        model, saved = _loader(path, config)(), str(path)
        seconds = json.loads((path / "build.json").read_text())
    else:
        clock = time.perf_counter()
        model = build(previous())
        seconds["build"] = time.perf_counter() - clock
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)
        model.save_pretrained(tmp)
        atomic_write_json(tmp / "build.json", seconds)
        os.replace(tmp, path)
        saved = str(path)
    result = _measure(config, stage, label, saved, model, seconds, envs)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / "stage.json", asdict(result))
    _say(config, f"  {stage}: IND {_success(result, 'ind')}, OOD {_success(result, 'ood')}, "
                 f"{result.model_bytes / 1e6:.1f} MB, {result.latency_ms:.1f} ms / action "
                 f"({sum(seconds.values()):.0f} s)")
    return result


class SharedEnv:
    """One simulator env for the evaluations of every stage, built on first use and closed by `close`
    (a new env renders its first frame slowly: about 10 s on a 2-core CPU)."""

    def __init__(self, config: RLRCConfig) -> None:
        self.config, self.envs = config, None

    def get(self):
        if self.envs is None:
            from vla_compress.envs import make_env

            c = self.config
            workers = min(c.num_envs, len(c.eval_tasks()) * c.episodes)
            self.envs = make_env(tasks=c.eval_tasks(), num_envs=workers, image_size=EVAL_IMAGE_SIZE,
                                 max_episode_steps=c.episode_steps)
        return self.envs

    def close(self) -> None:
        if self.envs is not None:
            self.envs.close()
            self.envs = None


def _measure(config: RLRCConfig, stage: str, label: str, path: str | None, model, seconds: dict[str, float],
             envs: SharedEnv) -> StageResult:
    """Evaluate and profile one stage's model (timings added to `seconds`)."""
    clock = time.perf_counter()
    result = evaluate(model, tasks=config.eval_tasks(), episodes_per_task=config.episodes, seed=config.eval_seed,
                      image_size=EVAL_IMAGE_SIZE, max_episode_steps=config.episode_steps,
                      progress=config.progress, envs=envs.get())
    seconds["evaluate"] = time.perf_counter() - clock
    clock = time.perf_counter()
    prof = profile(model, batch_size=config.profile_batch, iters=config.profile_iters, seed=config.seed,
                   image_size=EVAL_IMAGE_SIZE)
    seconds["profile"] = time.perf_counter() - clock
    counts = success_summary(result.episodes)
    return StageResult(
        name=stage, label=label, path=path,
        ind_successes=counts["ind"]["successes"], ind_episodes=counts["ind"]["episodes"],
        ood_successes=counts["ood"]["successes"], ood_episodes=counts["ood"]["episodes"],
        params=prof.params, model_bytes=prof.model_bytes, latency_ms=prof.latency_ms_median,
        actions_per_s=prof.throughput_batch, profile_batch=prof.batch_size, seconds=seconds,
        evaluation=result.to_dict(), profile=prof.to_dict())


def _loader(path: Path, config: RLRCConfig) -> Callable[[], Any]:
    from vla_compress import load_vla

    return lambda: load_vla(path, device=config.device, dtype=config.dtype)


def _load_base(model_or_name: Any, config: RLRCConfig) -> tuple[Any, str]:
    """(the dense model, its name): loaded with `load_vla` from a name, or the model given."""
    if isinstance(model_or_name, (str, Path)):
        from vla_compress import load_vla

        return load_vla(model_or_name, device=config.device, dtype=config.dtype), str(model_or_name)
    if not callable(getattr(model_or_name, "predict_action", None)):
        raise ValueError("model_or_name must be a VLA (with predict_action) or a name load_vla accepts, got "
                         f"{type(model_or_name).__name__}")
    return model_or_name, type(model_or_name).__name__


def _demos(demos, config: RLRCConfig, out: Path, envs: SharedEnv):
    """(the demo dataset, what the report says about it): `config.demos`, or generated into out/demos."""
    from vla_compress.data import DemoDataset, generate_demos

    if demos is not None:
        return demos, {"path": str(config.demos), "episodes": demos.num_episodes, "samples": len(demos),
                       "generated": False, "seconds": 0.0}
    path = out / "demos"
    count = len(resolve_tasks(config.demo_tasks)) * config.demo_episodes
    if (path / "summary.json").exists() and (path / "norm_stats.json").exists():
        summary = json.loads((path / "summary.json").read_text())
        _say(config, f"demos: {count} episodes generated before ({path}), skipped")
    else:
        _say(config, f"demos: generating {count} scripted-expert episodes ({config.demo_episodes} per task) "
                     f"into {path}")
        started = time.perf_counter()
        envs.get()  # an open env keeps the renderer warm: the demos' env (and every later one) starts fast
        summary = generate_demos(path, tasks=config.demo_tasks, episodes_per_task=config.demo_episodes,
                                 seed=config.seed, progress=config.progress)
        _say(config, f"demos: {count} episodes in {time.perf_counter() - started:.0f} s")
    dataset = DemoDataset(path)
    return dataset, {"path": str(path), "episodes": dataset.num_episodes, "samples": len(dataset),
                     "generated": True, "seconds": float(summary["seconds"])}


# ---- checks ------------------------------------------------------------------------------------------------
def check_writable(out: Path) -> None:
    """ValueError unless `out` is a directory that can be written or created (nothing is created here)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir={str(out)!r} exists and is not a directory")
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"output_dir={str(out)!r} cannot be created: {str(ancestor)!r} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"output_dir={str(out)!r} is not writable ({str(ancestor)!r} is read-only to this user)")


def open_demos(path: str | Path):
    """The `DemoDataset` at `path`; ValueError naming `demos` when it does not exist or holds no episodes."""
    from vla_compress.data import DemoDataset

    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"demos={str(path)!r} does not exist; give a directory written by `vla-compress demos`")
    try:
        return DemoDataset(path)
    except (ValueError, OSError) as error:
        raise ValueError(f"demos={str(path)!r} holds no episodes ({error})") from None


def check_same_run(out: Path, identity: dict[str, Any], config: RLRCConfig) -> None:
    """ValueError when `out` holds a run of another model or other settings (resuming it would mix them)."""
    saved_path = out / "rlrc_config.json"
    if not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text())
    differing = ["the model"] if saved.get("fingerprint") != identity["fingerprint"] else []
    before, now = saved.get("config", {}), identity["config"]
    differing += [k for k in sorted(set(before) | set(now))
                  if k not in config.RESUME_MAY_CHANGE and before.get(k) != now.get(k)]
    if differing:
        raise ValueError(f"output_dir={str(out)!r} holds an RLRC run with other settings (differing: "
                         f"{', '.join(differing)}); use another output directory or delete it to start fresh")


def spread_samples(dataset, count: int) -> list[dict[str, Any]]:
    """`count` items spread evenly over `dataset` (all of them when it is smaller)."""
    if count < 1:
        raise ValueError(f"calibration_samples={count} is invalid; allowed: a positive int")
    step = max(1, len(dataset) // count)
    return [dataset[i] for i in range(0, len(dataset), step)][:count]


def _section(cls: type, values: dict[str, Any], owned: dict[str, str | None], section: str) -> dict[str, Any]:
    """`values` checked against the fields of `cls`, refusing the ones the pipeline sets."""
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"{section} has unknown keys {unknown}; allowed: {sorted(allowed - set(owned))}")
    for key in values:
        if key in owned:
            where = f"set {owned[key]} instead" if owned[key] else "the pipeline sets it"
            raise ValueError(f"{section}.{key} cannot be given here: {where}")
    return dict(values)


def _machine(config: RLRCConfig) -> dict[str, Any]:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": config.device, "dtype": config.dtype or "as stored",
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _say(config: RLRCConfig, message: str) -> None:
    if config.progress:
        print(f"[rlrc {time.strftime('%H:%M:%S')}] {message}", flush=True)


__all__ = ["RLRCConfig", "RLRCReport", "StageResult", "check_writable", "config_from_yaml", "open_demos",
           "run_rlrc", "spread_samples"]

