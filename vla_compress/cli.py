"""The `vla-compress` command line: one command per API verb (info, prune, quantize, recover, evaluate, ...)
and `rlrc`, the whole pipeline.

Every command that changes a model loads it with `load_vla`, writes a `save_pretrained` directory
to `--output` and prints where. Bad input (an unknown preset, a ratio out of range, unsupported
bits, a missing backend) exits with code 2 and a one-line message naming the argument.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from vla_compress.envs.tasks import DEFAULT_CAMERA

app = typer.Typer(
    name="vla-compress",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Prune, recover and quantize vision-language-action policies such as OpenVLA.",
)

ModelArg = Annotated[
    str,
    typer.Argument(
        help="A preset (tiny, tiny-maniskill, openvla-7b), a local checkpoint "
        "directory, or a hub id such as openvla/openvla-7b."
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        help="Where to load the model: cpu, cuda, cuda:1, or meta (presets only: shapes without memory)."
    ),
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(help="float32, bfloat16, float16 (or fp32/bf16/fp16); default: the stored dtype."),
]
TASKS_HELP = "ind, ood, all, a task id, or comma-separated task ids (e.g. red_cube_on_blue_plate)."


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn our argument errors into a one-line message and exit code 2 (no traceback)."""
    try:
        yield
    except (ValueError, ImportError, FileNotFoundError) as error:
        typer.echo(f"error: {' '.join(str(error).split())}", err=True)
        raise typer.Exit(code=2) from None


def check_device(device: str | None) -> None:
    """ValueError unless `device` exists on this machine (None: the command's default)."""
    if device is not None:
        from vla_compress.modeling import resolve_device

        resolve_device(device)


def check_output_dir(path: Path) -> None:
    """ValueError unless `path` is a directory that can be written or created (`rlrc`'s check, shared)."""
    from vla_compress.pipeline import check_writable

    check_writable(path)


def check_output_file(path: Path) -> None:
    """ValueError unless `path` can be written as a file (its missing parents are created later)."""
    from vla_compress.pipeline import check_writable

    if path.is_dir():
        raise ValueError(f"output={str(path)!r} is a directory; allowed: a file path such as results.json")
    try:
        check_writable(path.parent)
    except ValueError as error:
        raise ValueError(f"output={str(path)!r} cannot be written: {error}") from None


def load_model(name_or_path: str, device: str, dtype: str | None):
    """`load_vla`; on the meta device the model is built without allocating its weights."""
    import torch

    from vla_compress import load_vla

    if device != "meta":
        return load_vla(name_or_path, device=device, dtype=dtype)
    with torch.device("meta"):
        return load_vla(name_or_path, device="meta", dtype=dtype)


def parse_tasks(tasks: str) -> str | list[str]:
    """ "ind" stays a name; "a,b" becomes a list of task ids."""
    return [t.strip() for t in tasks.split(",") if t.strip()] if "," in tasks else tasks


def demo_samples(path: Path, count: int) -> list[dict[str, Any]]:
    """`count` samples spread evenly over a demo directory written by `vla-compress demos`."""
    from vla_compress.data import DemoDataset
    from vla_compress.pipeline import spread_samples

    if count < 1:
        raise ValueError(f"calibration_samples={count} is invalid; allowed: a positive int")
    return spread_samples(DemoDataset(path), count)


def size_table(model) -> list[str]:
    """Parameters and bytes per component, one aligned row each."""
    from vla_compress import component_sizes

    rows = [f"{'component':<16}{'parameters':>16}{'MiB':>12}"]
    for name, size in component_sizes(model).items():
        rows.append(f"{name:<16}{size.params:>16,}{size.bytes / 2**20:>12.2f}")
    return rows


def pruning_state(config) -> list[str]:
    """Per-layer widths of a pruned model, or 'dense'."""
    widths = config.llm_layer_widths
    if not widths:
        return ["pruning: dense (every decoder layer at the config's width)"]
    rows = ["pruning: per-layer widths (heads / KV heads / MLP channels)"]
    for i, width in enumerate(widths):
        rows.append(
            f"  layer {i:>3}: {width['num_attention_heads']} / {width['num_key_value_heads']} / "
            f"{width['intermediate_size']}"
        )
    return rows


def quantization_state(config) -> list[str]:
    """The recorded quantization settings, or 'none'."""
    settings = config.quantization
    if not settings:
        return ["quantization: none"]
    shown = {key: value for key, value in settings.items() if key != "modules"}
    return [f"quantization: {json.dumps(shown)}", f"  {len(settings.get('modules', []))} quantized modules"]


@app.command()
def info(model: ModelArg, device: DeviceOpt = "cpu", dtype: DtypeOpt = None) -> None:
    """Print parameters and bytes per component, the pruning state and the quantization state.

    \b
    Example:
        vla-compress info tiny
        vla-compress info openvla-7b --device meta --dtype bf16
    """
    with user_errors():
        check_device(device)
        loaded = load_model(model, device, dtype)
    typer.echo(f"model: {model}")
    typer.echo(
        "\n".join([*size_table(loaded), *pruning_state(loaded.config), *quantization_state(loaded.config)])
    )


@app.command()
def prune(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the pruned checkpoint.")],
    ratio: Annotated[
        float, typer.Option(help="Fraction to remove, strictly between 0 and 1 (see docs/pruning.md).")
    ],
    importance: Annotated[
        str | None,
        typer.Option(help="block method: taylor (default; LLM-Pruner's param_mix), taylor_vectorize, "
                     "taylor_param_first, taylor_param_second, l1, l2, random."),
    ] = None,
    method: Annotated[str, typer.Option(help="block, flap, magnitude or wanda.")] = "block",
    calibration: Annotated[
        Path | None,
        typer.Option(help="Demo directory (from `vla-compress demos`) for taylor, flap and wanda."),
    ] = None,
    calibration_samples: Annotated[int, typer.Option(help="Samples drawn evenly from --calibration.")] = 64,
    round_to: Annotated[
        int | None, typer.Option(help="Kept widths are multiples of this (structured methods).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Calibration batch size.")] = 4,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Prune the language model's decoder layers and save the result (reloads with load_vla).

    \b
    Example:
        vla-compress prune tiny --ratio 0.5 --importance l2 -o tiny-pruned
        vla-compress prune tiny-maniskill --ratio 0.9 --calibration demos -o p90
    """
    from vla_compress import prune as prune_model

    with user_errors():
        check_device(device)
        check_output_dir(output)
        loaded = load_model(model, device, dtype)
        samples = demo_samples(calibration, calibration_samples) if calibration is not None else None
        pruned = prune_model(
            loaded,
            ratio,
            importance=importance,
            method=method,
            calibration=samples,
            round_to=round_to,
            batch_size=batch_size,
        )
    pruned.save_pretrained(output)
    report = pruned.prune_report
    (output / "prune_report.json").write_text(json.dumps(dataclasses.asdict(report), indent=2))
    typer.echo(report.summary())
    typer.echo(f"saved the pruned model to {output}")


@app.command()
def quantize(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the quantized checkpoint.")],
    bits: Annotated[int, typer.Option(help="4 or 8.")] = 4,
    method: Annotated[str, typer.Option(help="bnb (NF4 / LLM.int8), gptq, quanto, or aten (fast on CPU).")] = "bnb",
    calibration: Annotated[Path | None, typer.Option(help="Demo directory; required by gptq.")] = None,
    calibration_samples: Annotated[int, typer.Option(help="Samples drawn evenly from --calibration.")] = 32,
    batch_size: Annotated[int, typer.Option(help="Calibration batch size (gptq).")] = 4,
    include_lm_head: Annotated[bool, typer.Option(help="Quantize the output head too.")] = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Quantize the language model's decoder linears and save the result (reloads with load_vla).

    \b
    Example:
        vla-compress quantize tiny-pruned --bits 4 --method bnb -o tiny-4bit
        vla-compress quantize p90 --method gptq --calibration demos -o p90-gptq
    """
    from vla_compress.quantization import quantize as quantize_model

    with user_errors():
        check_device(device)
        check_output_dir(output)
        loaded = load_model(model, device, dtype)
        samples = demo_samples(calibration, calibration_samples) if calibration is not None else None
        options = {"batch_size": batch_size} if method == "gptq" else {}
        quantized = quantize_model(
            loaded, bits, method=method, include_lm_head=include_lm_head, calibration=samples, **options
        )
    quantized.save_pretrained(output)
    typer.echo("\n".join(size_table(quantized)))
    typer.echo(f"saved the {bits}-bit ({method}) model to {output}")


def read_yaml(path: Path | None) -> dict[str, Any]:
    """The `sft:` and `rl:` sections of a recovery config file (empty when no file)."""
    from vla_compress.pipeline import SECTIONS, read_config_file

    if path is None:
        return {}
    data = read_config_file(path)
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ValueError(f"config={str(path)!r} has unknown sections {sorted(unknown)}; allowed: sft, rl")
    return data


def build_config(cls: type, values: dict[str, Any], section: str):
    """A config dataclass from YAML/flag values, naming unknown keys."""
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"{section} has unknown keys {unknown}; allowed: {sorted(allowed)}")
    return cls(**values)


def given(**flags: Any) -> dict[str, Any]:
    """The flags the user set (None means 'not given', so YAML values stay)."""
    return {key: value for key, value in flags.items() if value is not None}


@app.command()
def recover(
    model: ModelArg,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Directory for the recovered checkpoint; training logs go to OUTPUT/runs/."
        ),
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            help="YAML with `sft:` (SFTConfig fields) and `rl:` (PPOConfig fields); flags override it."
        ),
    ] = None,
    sft_data: Annotated[
        list[Path] | None,
        typer.Option(help="Demo directory; enables the SFT stage. Repeat it to train on several (the demos and "
                     "DAgger rounds of a base's recipe); the first one's norm stats are used."),
    ] = None,
    sft_steps: Annotated[int | None, typer.Option(help="SFT optimizer steps (default 10000).")] = None,
    sft_batch_size: Annotated[int | None, typer.Option(help="SFT batch size (default 32).")] = None,
    sft_lr: Annotated[float | None, typer.Option(help="SFT peak learning rate (default 2e-4).")] = None,
    lora_rank: Annotated[
        int | None, typer.Option(help="LoRA rank for SFT; default full fine-tuning.")
    ] = None,
    rl_steps: Annotated[
        int | None, typer.Option(help="PPO env steps (paper: 600000); enables the RL stage.")
    ] = None,
    rl_num_envs: Annotated[int | None, typer.Option(help="Parallel envs for PPO (default 64).")] = None,
    rl_tasks: Annotated[str | None, typer.Option(help=f"PPO tasks: {TASKS_HELP}")] = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Recover a pruned model with SFT on demonstrations, then PPO in the simulator.

    \b
    Example:
        vla-compress recover p90 --sft-data demos --sft-steps 1000 -o p90-sft
        vla-compress recover p90 --sft-data demos --sft-data dagger_1 --sft-steps 6000 -o p90-sft
        vla-compress recover p90 --config recover.yaml -o p90-rec
    \b
    recover.yaml:
        sft: {data: demos, steps: 10000, batch_size: 32}
        rl: {total_env_steps: 600000, num_envs: 64, tasks: ind}
    """
    with user_errors():
        from vla_compress.recovery import recover as recover_model

        check_device(device)
        check_output_dir(output)
        sft_flags = given(
            data=sft_data or None, steps=sft_steps, batch_size=sft_batch_size, learning_rate=sft_lr,
            lora_rank=lora_rank,
        )
        rl_flags = given(
            total_env_steps=rl_steps, num_envs=rl_num_envs, tasks=parse_tasks(rl_tasks) if rl_tasks else None
        )
        sft, rl = recovery_configs(read_yaml(config), output / "runs", device, sft_flags, rl_flags)
        if sft is None and rl is None:
            raise ValueError("nothing to do: give --sft-data and/or --rl-steps (or a --config with sft/rl)")
        loaded = load_model(model, device, dtype)
        recovered = recover_model(loaded, sft=sft, rl=rl)
    recovered.save_pretrained(output)
    typer.echo(f"saved the recovered model to {output} (training logs in {output / 'runs'})")


def recovery_configs(
    yaml_config: dict[str, Any], runs: Path, device: str, sft_flags: dict[str, Any], rl_flags: dict[str, Any]
) -> tuple[Any, Any]:
    """SFTConfig / PPOConfig (or None for a stage not asked for) from YAML values and flags."""
    from vla_compress.data import DemoDataset
    from vla_compress.recovery.ppo import PPOConfig
    from vla_compress.recovery.sft import SFTConfig

    sft_values = {**(yaml_config.get("sft") or {}), **sft_flags}
    rl_values = {**(yaml_config.get("rl") or {}), **rl_flags}
    sft = rl = None
    if sft_values:
        if "data" not in sft_values:
            raise ValueError("sft_data is required for the SFT stage: a demo directory")
        sft_values["data"] = DemoDataset(sft_values["data"])
        sft = build_config(SFTConfig, {"output_dir": runs / "sft", "device": device, **sft_values}, "sft")
    if rl_values:
        rl = build_config(PPOConfig, {"output_dir": runs / "ppo", "device": device, **rl_values}, "rl")
    return sft, rl


@app.command()
def rlrc(
    model: ModelArg,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Directory for every stage, the table (rlrc.md, rlrc.json) and rlrc.png."
        ),
    ],
    demos: Annotated[
        Path | None,
        typer.Option(help="Demo directory (from `vla-compress demos`); default: a few generated into OUTPUT/demos."),
    ] = None,
    ratio: Annotated[
        float | None, typer.Option(help="Fraction pruned (block-wise, Taylor), strictly between 0 and 1 (default 0.9).")
    ] = None,
    sft_steps: Annotated[int | None, typer.Option(help="SFT steps after pruning (default 500).")] = None,
    ppo_steps: Annotated[int | None, typer.Option(help="PPO env steps after SFT; 0 (default) skips PPO.")] = None,
    bits: Annotated[int | None, typer.Option(help="4 or 8 (bitsandbytes), 16 = no quantization (default 4).")] = None,
    episodes: Annotated[int | None, typer.Option(help="Evaluation episodes per task and stage (default 2).")] = None,
    tasks: Annotated[str | None, typer.Option(help=f"Evaluation tasks (default all): {TASKS_HELP}")] = None,
    tasks_per_split: Annotated[
        int | None, typer.Option(help="Evaluate only the first N IND and the first N OOD tasks of --tasks.")
    ] = None,
    episode_steps: Annotated[int | None, typer.Option(help="Evaluation (and PPO) episode length (default 60).")] = None,
    demo_episodes: Annotated[
        int | None, typer.Option(help="Expert episodes per IND task when generating demos (default 2).")
    ] = None,
    num_envs: Annotated[int | None, typer.Option(help="Parallel simulator workers of the evaluations.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the demos generated here and of training.")] = None,
    eval_seed: Annotated[
        int | None, typer.Option(help="Seed of the evaluation layouts (default 1; must differ from --seed).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="YAML: RLRCConfig fields, plus `sft:` / `rl:` sections as for `recover --config`; flags override it."
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:1 (default cpu).")] = None,
    dtype: DtypeOpt = None,
) -> None:
    """The whole method: evaluate the dense model, prune, SFT, optional PPO, quantize; measure every stage.

    Every stage is saved (save_pretrained), evaluated on the ManiSkill3 suite (IND / OOD success with
    Wilson intervals) and profiled; the table is printed and written to OUTPUT/rlrc.md and rlrc.json,
    the plot to OUTPUT/rlrc.png. A rerun skips the stages already done.

    \b
    Example:
        vla-compress rlrc tiny-maniskill -o rlrc-tiny --sft-steps 500 --episodes 1 --tasks-per-split 4
        vla-compress rlrc openvla/openvla-7b -o rlrc-7b --demos demos --config rlrc.yaml --device cuda
    \b
    rlrc.yaml:
        ratio: 0.9
        episodes: 8
        sft: {steps: 10000, batch_size: 32, learning_rate: 2.0e-4}
        rl: {total_env_steps: 600000, num_envs: 64}
    """
    with user_errors():
        from vla_compress.pipeline import config_from_yaml, run_rlrc

        check_device(device)
        settings = config_from_yaml(
            config, demos=demos, ratio=ratio, sft_steps=sft_steps, ppo_steps=ppo_steps, bits=bits,
            episodes=episodes, tasks=parse_tasks(tasks) if tasks else None, tasks_per_split=tasks_per_split,
            episode_steps=episode_steps, demo_episodes=demo_episodes, num_envs=num_envs, seed=seed,
            eval_seed=eval_seed, device=device, dtype=dtype,
        )
        report = run_rlrc(model, settings, output)
    typer.echo(report.markdown())
    typer.echo(f"wrote {output / 'rlrc.md'}, rlrc.json and rlrc.png; the last stage's model: {report.stages[-1].path}")


@app.command()
def evaluate(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="JSON file for the results.")] = Path(
        "evaluation.json"
    ),
    suite: Annotated[
        str, typer.Option(help="maniskill, libero_spatial or libero_10 (LIBERO needs vla-compress[libero]).")
    ] = "maniskill",
    tasks: Annotated[
        str, typer.Option(help=TASKS_HELP + " LIBERO: all, task names or indices 0..9, comma-separated.")
    ] = "all",
    episodes: Annotated[int, typer.Option(help="Episodes per task.")] = 10,
    num_envs: Annotated[int, typer.Option(help="Parallel simulator workers.")] = 1,
    max_episode_steps: Annotated[
        int | None, typer.Option(help="Episode length (default: the suite's: 60, LIBERO 220 / 520).")
    ] = None,
    image_size: Annotated[int, typer.Option(help="Camera image size.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the episode layouts.")] = 0,
    unnorm_key: Annotated[str | None, typer.Option(help="norm_stats entry to un-normalise actions.")] = None,
    camera: Annotated[str, typer.Option(help="ManiSkill view the policy was trained on: front, workspace or "
                                             "workspace+wrist (wrist-camera inset).")] = DEFAULT_CAMERA,
    decode: Annotated[str, typer.Option(help="predict_action's decode path: dynamic, static, compiled or frozen.")
                      ] = "dynamic",
    gripper_switch_after: Annotated[
        int, typer.Option(help="Switch the gripper only after the policy asks for it this many steps running "
                               "(GripperHysteresis; 1: the policy's own command).")
    ] = 1,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Success rate on a simulator suite: ManiSkill3 (in-distribution and held-out tasks) or LIBERO.

    \b
    Examples:
        vla-compress evaluate p90-rec --tasks ood --episodes 10 -o ood.json
        vla-compress evaluate my-libero-vla --suite libero_spatial --episodes 50
    """
    from vla_compress.evaluation import evaluate as evaluate_policy

    with user_errors():
        check_device(device)
        check_output_file(output)
        from vla_compress.envs.tasks import check_camera

        check_camera(camera)
        from vla_compress.evaluation.gripper_hysteresis import GripperHysteresis, check_switch_after
        from vla_compress.modeling.modeling_openvla import check_decode

        check_switch_after(gripper_switch_after)
        check_decode(decode)
        loaded = load_model(model, device, dtype)
        policy = GripperHysteresis(loaded, switch_after=gripper_switch_after, decode=decode)
        result = evaluate_policy(
            policy,
            suite=suite,
            tasks=parse_tasks(tasks),
            episodes_per_task=episodes,
            num_envs=num_envs,
            seed=seed,
            image_size=image_size,
            max_episode_steps=max_episode_steps,
            unnorm_key=unnorm_key,
            output=output,
            camera=camera,
        )
    for name, rate in (
        ("IND", result.ind_success_rate),
        ("OOD", result.ood_success_rate),
        ("mean", result.mean_success_rate),
    ):
        if rate is not None:
            typer.echo(f"{name} success rate: {rate:.3f}")
    typer.echo(f"wrote per-task results to {output}")


@app.command()
def demos(
    out_dir: Annotated[Path, typer.Argument(help="Directory for the HDF5 episodes and norm_stats.json.")],
    tasks: Annotated[str, typer.Option(help=TASKS_HELP)] = "ind",
    episodes_per_task: Annotated[int, typer.Option(help="Successful expert episodes kept per task.")] = 40,
    image_size: Annotated[int, typer.Option(help="Camera image size.")] = 128,
    num_workers: Annotated[int, typer.Option(help="Parallel simulator workers.")] = 1,
    max_episode_steps: Annotated[
        int | None, typer.Option(help="Episode length (default: the suite's, 60).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the episode layouts.")] = 0,
    noise_std: Annotated[
        float, typer.Option(help="DART noise on the executed xyz action (the clean action is recorded).")
    ] = 0.05,
) -> None:
    """Record scripted-expert demonstrations in the ManiSkill3 suite; needs the simulator.

    \b
    Example:
        vla-compress demos demos --tasks ind --episodes-per-task 40 --image-size 128
    """
    from vla_compress.data import generate_demos

    with user_errors():
        check_output_dir(out_dir)
        summary = generate_demos(
            out_dir,
            tasks=parse_tasks(tasks),
            episodes_per_task=episodes_per_task,
            image_size=image_size,
            seed=seed,
            num_workers=num_workers,
            max_episode_steps=max_episode_steps,
            noise_std=noise_std,
        )
    typer.echo(f"expert success rate {summary['expert_success_rate']:.2f}, {summary['megabytes']:.1f} MB")
    typer.echo(f"wrote demonstrations to {out_dir}")


@app.command()
def dagger(
    model: ModelArg,
    out_dir: Annotated[Path, typer.Argument(help="Directory for the HDF5 episodes (a demo directory's layout).")],
    tasks: Annotated[str, typer.Option(help=TASKS_HELP)] = "ind",
    episodes_per_task: Annotated[int, typer.Option(help="Rollouts of the model per task.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the episode layouts; keep it apart from demos and "
                                           "evaluation.")] = 100,
    num_workers: Annotated[int, typer.Option(help="Parallel simulator workers.")] = 2,
    expert_mix: Annotated[float, typer.Option(help="Probability per step of executing the expert's action "
                                                   "(DAgger's beta), in [0, 1].")] = 0.0,
    image_size: Annotated[int, typer.Option(help="Camera image size.")] = 128,
    max_episode_steps: Annotated[
        int | None, typer.Option(help="Episode length (default: the suite's, 60).")
    ] = None,
    camera: Annotated[str, typer.Option(help="ManiSkill view the policy was trained on.")] = DEFAULT_CAMERA,
    decode: Annotated[str, typer.Option(help="predict_action's decode path: dynamic, static, compiled or frozen.")
                      ] = "dynamic",
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Roll out a model and label every state it visits with the scripted expert (DAgger data for SFT).

    Failed episodes are kept; pass the directory to `recover --sft-data` beside the demos.

    \b
    Example:
        vla-compress dagger tiny-maniskill dagger_1 --episodes-per-task 8 --seed 301
        vla-compress recover p90 --sft-data demos --sft-data dagger_1 --sft-steps 6000 -o p90-sft
    """
    from vla_compress.data import collect_dagger
    from vla_compress.data.dagger import check_dagger_args

    with user_errors():
        check_device(device)
        check_output_dir(out_dir)
        from vla_compress.envs.tasks import check_camera, resolve_tasks
        from vla_compress.modeling.modeling_openvla import check_decode

        task_list = resolve_tasks(parse_tasks(tasks))
        check_dagger_args(episodes_per_task, num_workers, expert_mix)
        check_camera(camera)
        check_decode(decode)
        loaded = load_model(model, device, dtype)
        summary = collect_dagger(loaded, out_dir, tasks=task_list, episodes_per_task=episodes_per_task, seed=seed,
                                 num_workers=num_workers, expert_mix=expert_mix, image_size=image_size,
                                 max_episode_steps=max_episode_steps, camera=camera, decode=decode)
    typer.echo(f"learner success on its rollouts: {summary['learner_success_rate']:.3f}")
    typer.echo(f"wrote DAgger data to {out_dir}")


@app.command()
def profile(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="JSON file for the results.")] = Path(
        "profile.json"
    ),
    batch_size: Annotated[int, typer.Option(help="Batch size of the throughput measurement.")] = 8,
    warmup: Annotated[int, typer.Option(help="Untimed calls before timing.")] = 3,
    iters: Annotated[int, typer.Option(help="Timed calls per batch size.")] = 20,
    image_size: Annotated[int, typer.Option(help="Camera frame size fed to the processor.")] = 128,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Bytes, peak memory, batch-1 latency and throughput of predict_action.

    \b
    Example:
        vla-compress profile p90-4bit --batch-size 8 --iters 20 -o p90-4bit.json
    """
    from vla_compress.evaluation import profile as profile_model

    with user_errors():
        check_device(device)
        check_output_file(output)
        loaded = load_model(model, device, dtype)
        result = profile_model(
            loaded, batch_size=batch_size, warmup=warmup, iters=iters, image_size=image_size
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result.to_dict(), indent=2))
    typer.echo(
        f"{result.model_bytes / 2**20:.1f} MiB, latency {result.latency_ms_median:.1f} ms (median, batch 1), "
        f"{result.throughput_batch:.1f} actions/s at batch {batch_size}"
    )
    typer.echo(f"wrote the profile to {output}")
