r"""Train the shipped base policy `tiny-maniskill` from scratch on this CPU: one resumable command.

    python benchmarks/train_base.py --output-dir /work/runs/base          # the whole recipe (docs/model_card.md)
    python benchmarks/train_base.py --output-dir /tmp/b --episodes-per-task 1 --steps 4 --dagger-rounds 1 \
        --dagger-episodes 1 --dagger-steps 2 --eval-episodes 1 --tasks-limit 2 --no-ship   # smoke
    python benchmarks/train_base.py --output-dir /work/runs/more --init tiny-maniskill --steps 0  # more DAgger

Stages, each cached in --output-dir so a rerun after an interruption resumes where it stopped:
  demos/          scripted-expert demonstrations of the 16 IND tasks (one HDF5 file per task)
  layouts/        --layouts-per-task reset states per IND task with the expert's first action: many
                  object layouts cheaply (no stepping), so the policy learns where things are, not
                  the demos' few hundred layouts
  train_0/        training from scratch on the demos (checkpoints every --checkpoint-every steps)
  dagger_R/       round R: the current policy rolled out on the IND tasks, every visited state labelled
                  by the state-based expert; train_R/ continues training on demos + all DAgger data
  eval.json       greedy success on all 25 tasks (IND and held-out OOD), --eval-episodes per task, on
                  evaluation seeds disjoint from every demo and DAgger seed
  final/          the model in the OpenVLA format, model_card.json (settings, stage wall times, success
                  with 95% Wilson intervals), eval_by_task.md, the training-only heads; copied into the
                  package unless --no-ship

With --init the recipe continues a model this script wrote (the shipped one included) instead of starting
from scratch: train_0 fine-tunes it for --steps (0: skipped) and the DAgger rounds continue its numbering,
so a session can add rounds to the last one's model without repeating its hours.

Training (written here, not `train_sft`, for two training-only losses the library's SFT has no use for):
  - the action tokens' cross-entropy against a Gaussian-smoothed target over neighbouring bins (the
    256 bins are ordered, so a near miss is cheaper than a far one; the argmax target is unchanged);
    `--gripper-weight` weights the gripper token in it (a wrong open or close loses the episode);
  - an auxiliary regression of privileged simulator state (TCP, target cube and plate positions, finger
    opening, grasp) from the LM's hidden state at the position that predicts the first action token;
  - a dense per-patch map of the objects (a cube of each colour, a plate of each colour, the TCP) from
    the projector's visual tokens, Gaussian heatmaps around the objects' projected image keypoints:
    each visual token learns what lies in its patch, locally and fast;
  - grounding: the LM's hidden state at the cube's colour word regresses that cube's image position,
    at the plate's colour word that plate's, so the lookup from a colour word to the object is trained
    directly instead of only through the action loss.
  The heads are dropped after training: inference sees only the image and the instruction.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import EVAL_SEED
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from vla_compress.data import DemoDataset, collect_dagger, generate_demos
from vla_compress.data.demos import STATE_FIELDS, atomic_write_json, record_task_file
from vla_compress.data.expert import ScriptedExpert
from vla_compress.envs import make_env
from vla_compress.envs.tasks import CAMERAS, COLOUR_NAMES, DEFAULT_CAMERA, TASKS_IND, TASKS_OOD, resolve_tasks
from vla_compress.evaluation import GripperHysteresis, evaluate
from vla_compress.evaluation.success import success_summary
from vla_compress.loading import load_vla
from vla_compress.modeling import build_model, preset_config
from vla_compress.modeling.modeling_openvla import DECODE_PATHS
from vla_compress.modeling.presets import SHIPPED_PRESETS, shipped_preset_dir
from vla_compress.modeling.processing import resize_images, shift_images, shift_offsets
from vla_compress.recovery.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from vla_compress.recovery.sft import warmup_cosine

REPO = Path(__file__).resolve().parents[1]
PACKAGE_PRESET_DIR = REPO / "vla_compress" / "presets" / SHIPPED_PRESETS["tiny-maniskill"]
DEMO_SEED, DAGGER_SEED, LAYOUT_SEED = 0, 100, 200  # episode seeds never overlap with EVAL_SEED's (see --help)
PROBE_SEED = 700  # benchmarks/layout_probe.py's held-out layouts: no training stage uses it
HEADS_FILE = "training_heads.safetensors"  # the training-only heads, beside the weights, for a later --init


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/train_base"))
    parser.add_argument("--preset", default="tiny-policy", help="architecture preset trained from scratch")
    parser.add_argument("--init", default=None,
                        help="continue from this model instead of training --preset from scratch: a shipped "
                             "preset (tiny-maniskill) or a final/ directory of this script; its training heads "
                             "and DAgger round numbering carry over, so no DAgger seed repeats; --steps may be 0")
    parser.add_argument("--episodes-per-task", type=int, default=50, help="expert demos per IND task")
    parser.add_argument("--demo-noise", type=float, default=0.1, help="DART noise on the expert's executed xyz")
    parser.add_argument("--layouts-per-task", type=int, default=400, help="reset states per IND task (0: none)")
    parser.add_argument("--steps", type=int, default=3000, help="training steps on the demos alone")
    parser.add_argument("--dagger-rounds", type=int, default=3)
    parser.add_argument("--dagger-episodes", type=int, default=8, help="learner rollouts per IND task per round")
    parser.add_argument("--dagger-steps", type=int, default=700, help="training steps after each round")
    parser.add_argument("--decode", choices=[d for d in DECODE_PATHS if d != "frozen"], default="compiled",
                        help="predict_action's decode path in the DAgger rollouts and the evaluation (compiled: "
                             "about 2x faster per action for this small model here; the card's command names it)")
    parser.add_argument("--gripper-switch-after", type=int, default=1,
                        help="rollouts (DAgger, evaluation) switch the gripper only after the policy asks for it this "
                             "many steps running (GripperHysteresis; 1: the policy's own command)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dagger-lr", type=float, default=5e-4, help="peak lr of the training after a round")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--bin-sigma", type=float, default=1.5, help="width of the smoothed target, in bins")
    parser.add_argument("--gripper-weight", type=float, default=1.0,
                        help="weight of the gripper token in the action loss (its mistakes drop the cube)")
    parser.add_argument("--aux-weight", type=float, default=1.0, help="weight of the privileged-state loss")
    parser.add_argument("--dense-weight", type=float, default=1.0, help="weight of the per-patch object map loss")
    parser.add_argument("--ground-weight", type=float, default=1.0, help="weight of the colour-word grounding loss")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--eval-episodes", type=int, default=20, help="per task, all 25 tasks")
    parser.add_argument("--tasks-limit", type=int, default=None,
                        help="smoke runs: only the first N IND tasks (and N OOD tasks in the evaluation)")
    parser.add_argument("--num-envs", type=int, default=2, help="simulator workers")
    parser.add_argument("--camera", default=DEFAULT_CAMERA, choices=sorted(CAMERAS),
                        help="the suite's view (workspace+wrist: the workspace view with a wrist-camera inset)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="model init and batch order")
    parser.add_argument("--no-ship", action="store_true", help="do not copy the result into the package")
    args = parser.parse_args(argv)
    if args.steps < (0 if args.init else 1):
        parser.error(f"--steps must be >= 1 (>= 0 with --init), got {args.steps}")
    for name in ("episodes_per_task", "dagger_episodes", "dagger_steps", "batch_size",
                 "checkpoint_every", "eval_episodes", "num_envs", "threads", "gripper_switch_after"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("dagger_rounds", "layouts_per_task"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.lr <= 0 or args.dagger_lr <= 0 or args.bin_sigma <= 0:
        parser.error("--lr, --dagger-lr and --bin-sigma must be > 0")
    for name in ("gripper_weight", "aux_weight", "dense_weight", "ground_weight"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    return args


# ---- data ------------------------------------------------------------------------------------------------
def state_columns(name: str) -> slice:
    """The columns of one `STATE_FIELDS` entry in a recorded state row."""
    start = 0
    for field, width in STATE_FIELDS:
        if field == name:
            return slice(start, start + width)
        start += width
    raise KeyError(name)


KEYPOINTS, COLOURS = state_columns("keypoints"), state_columns("object_colours")
PHYSICAL = slice(0, state_columns("is_grasped").stop)  # TCP, cube, plate, finger opening, grasp


def aux_targets(state: np.ndarray) -> np.ndarray:
    """Physical state plus the offsets the expert acts on (cube - TCP, plate - TCP, plate - cube)."""
    tcp, cube, plate = state[:, 0:3], state[:, 3:6], state[:, 6:9]
    return np.concatenate([state[:, PHYSICAL], cube - tcp, plate - tcp, plate - cube], axis=1).astype(np.float32)


class TrainSet:
    """Every sample of some demo / DAgger directories as tensors: frames resized once to the model's input
    size (uint8), prompt + action tokens, standardised auxiliary targets (statistics of the first
    directory added, then fixed), image keypoints and object colours, the colour words' positions."""

    def __init__(self, model, norm_stats: dict):
        self.model, self.norm_stats = model, norm_stats
        self.images = self.input_ids = self.attention_mask = self.aux = self.keypoints = self.colours = None
        self.aux_stats: tuple[np.ndarray, np.ndarray] | None = None
        tokenizer = model.processor.tokenizer
        self.colour_token_ids = torch.tensor([tokenizer.convert_tokens_to_ids(c) for c in COLOUR_NAMES])

    def add(self, directory: Path) -> int:
        """Append every sample of `directory`; returns how many."""
        samples = list(DemoDataset(directory))
        # the library's one sample path (checks, normalisation); frames are resized once here, not per batch
        images, instructions, actions = self.model.processor.sample_arrays(samples, self.norm_stats)
        size = self.model.processor.image_sizes[0]
        frames = images.permute(0, 3, 1, 2).float()
        frames = torch.cat([resize_images(chunk, size, 255.0) for chunk in frames.split(2048)])
        frames = frames.round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        tokens = self.model.processor.tokenize(instructions, actions)
        state = np.stack([sample["state"] for sample in samples])
        if state.shape[1] < COLOURS.stop:
            raise ValueError(f"{directory} records {state.shape[1]} state columns, this recipe needs "
                             f"{COLOURS.stop} (image keypoints and colours): regenerate it")
        aux = aux_targets(state)
        if self.aux_stats is None:
            self.aux_stats = (aux.mean(0), aux.std(0) + 1e-3)
        new = {"images": frames, "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"],
               "aux": torch.as_tensor((aux - self.aux_stats[0]) / self.aux_stats[1]),
               "keypoints": torch.as_tensor(state[:, KEYPOINTS]), "colours": torch.as_tensor(state[:, COLOURS]).long()}
        for name, value in new.items():  # prompts of one suite share a length, so the token columns line up
            old = getattr(self, name)
            setattr(self, name, value if old is None else torch.cat([old, value]))
        return len(samples)

    def __len__(self) -> int:
        return len(self.aux)

    def batch(self, model, rows: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Samples `rows`, images shifted at random and their keypoints moved with them."""
        rows = torch.as_tensor(rows)
        images = self.images[rows]
        size = images.shape[1]
        pad, offsets = shift_offsets(np.random.default_rng(rng.integers(2**63)), len(rows), size)
        shifted = shift_images(images, None, offsets=offsets)
        moved = np.ascontiguousarray(pad - offsets[:, ::-1]) / size  # (u, v) order
        moved = torch.as_tensor(moved, dtype=torch.float32).repeat(1, 5)
        input_ids = self.input_ids[rows]
        is_colour = torch.isin(input_ids, self.colour_token_ids)
        return {"pixel_values": model.processor.pixel_values(shifted), "input_ids": input_ids,
                "attention_mask": self.attention_mask[rows], "aux": self.aux[rows],
                "keypoints": self.keypoints[rows] + moved, "colours": self.colours[rows],
                # [B, 2]: the cube's and the plate's colour word ("put the red cube on the blue plate")
                "colour_words": torch.stack([row.nonzero()[:2, 0] for row in is_colour])}


class StageClock:
    """Wall time of each stage, summed over resumed runs, in <output-dir>/stage_seconds.json."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds = json.loads(path.read_text()) if path.exists() else {}

    def record(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        atomic_write_json(self.path, self.seconds)


# ---- training --------------------------------------------------------------------------------------------
AUX_DIM = PHYSICAL.stop + 9  # aux_targets' columns
DENSE_CHANNELS = 2 * len(COLOUR_NAMES) + 1  # a cube of each colour, a plate of each colour, the TCP
HEATMAP_SIGMA = 0.6  # patches
# The image keypoints spread ~0.2 around the image centre: centred and scaled by this, a guess of the mean
# costs ~1 in MSE, as the standardised state targets do, so the loss weights compare.
KEYPOINT_SCALE = 0.2


def make_heads(hidden: int) -> nn.ModuleDict:
    """Training-only heads on the LM's width: physical state (MLP), per-patch object map, grounding."""
    return nn.ModuleDict({"state": nn.Sequential(nn.Linear(hidden, 256), nn.GELU(), nn.Linear(256, AUX_DIM)),
                          "dense": nn.Linear(hidden, DENSE_CHANNELS), "ground": nn.Linear(hidden, 2)})


def dense_targets(keypoints: torch.Tensor, colours: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, grid * grid, DENSE_CHANNELS] Gaussian heatmaps (peak 1) at the objects' image keypoints.

    `keypoints` [B, 10]: (u, v) in [0, 1] of the target cube, other cube, target plate, other plate, TCP;
    `colours` [B, 4]: colour indices of the first four. Channel c is a cube of colour c, 5 + c a plate."""
    centres = torch.arange(grid, dtype=torch.float32) + 0.5
    gv, gu = torch.meshgrid(centres, centres, indexing="ij")
    n = len(COLOUR_NAMES)
    channels = torch.cat([colours[:, :2], colours[:, 2:] + n, torch.full_like(colours[:, :1], 2 * n)], dim=1)
    points = keypoints.view(-1, 5, 2) * grid
    heat = torch.exp(-((gu - points[..., 0, None, None]) ** 2 + (gv - points[..., 1, None, None]) ** 2)
                     / (2 * HEATMAP_SIGMA**2))  # [B, 5, grid, grid]
    target = torch.zeros(len(keypoints), DENSE_CHANNELS, grid, grid)
    target.scatter_reduce_(1, channels[:, :, None, None].expand_as(heat), heat, reduce="amax")
    return target.flatten(2).transpose(1, 2)


class Captured:
    """The projector's visual tokens and the LM's final hidden states of the last forward (for the heads;
    `action_forward` returns neither, and these losses exist only in this recipe)."""

    def __init__(self, model):
        self.visual = self.hidden = None
        self.handles = [
            model.projector.register_forward_hook(lambda module, args, out: setattr(self, "visual", out)),
            model.language_model.model.norm.register_forward_hook(
                lambda module, args, out: setattr(self, "hidden", out)),
        ]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def auxiliary_losses(heads: nn.ModuleDict, captured: Captured, out_actions, batch: dict, grid: int
                     ) -> dict[str, torch.Tensor]:
    """The three training-only losses of the module docstring for one batch."""
    rows = torch.arange(len(batch["aux"]))
    n_patches = captured.visual.shape[1]
    words = captured.hidden[rows[:, None], batch["colour_words"] + n_patches]  # text follows BOS + patches
    goals = (batch["keypoints"].view(-1, 5, 2)[:, [0, 2]] - 0.5) / KEYPOINT_SCALE  # target cube, target plate
    maps = dense_targets(batch["keypoints"], batch["colours"], grid)
    # summed over the channels: a mean over mostly-empty maps would make the loss ~0.05 whatever is learned
    dense = F.binary_cross_entropy_with_logits(heads["dense"](captured.visual), maps, reduction="none").sum(-1)
    return {"aux": F.mse_loss(heads["state"](out_actions.critic_features), batch["aux"]),
            "dense": dense.mean(), "ground": F.mse_loss(heads["ground"](words), goals)}


def smoothed_action_loss(action_logits: torch.Tensor, target_index: torch.Tensor, sigma: float,
                         gripper_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy against a Gaussian over bins centred on each target bin ([B, 7, n_bins] logits), the
    gripper token's (the last) weighted by `gripper_weight` in the mean over tokens."""
    bins = torch.arange(action_logits.shape[-1], device=action_logits.device, dtype=torch.float32)
    target = torch.exp(-0.5 * ((bins - target_index.unsqueeze(-1).float()) / sigma) ** 2)
    target = target / target.sum(-1, keepdim=True)
    per_token = -(target * torch.log_softmax(action_logits.float(), dim=-1)).sum(-1)  # [B, 7]
    weights = torch.ones(per_token.shape[-1], device=per_token.device)
    weights[-1] = gripper_weight
    return (per_token * weights).mean()


def train_stage(model, heads: nn.ModuleDict, data: TrainSet, steps: int, lr: float, out: Path,
                args: argparse.Namespace, clock: StageClock) -> dict:
    """`steps` AdamW steps (warm-up + cosine) on `data`; resumes from `out`'s latest checkpoint.

    The wall time is added to `clock` under `out.name` at every checkpoint, so interrupted runs count."""
    params = [*model.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(min(args.warmup, steps // 10), steps, 0.1))
    start = 0
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None:
        state = load_trainer_state(checkpoint)
        model.load_state_dict(load_vla(checkpoint).state_dict())
        heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
    if start >= steps:
        return {"steps": steps, "resumed_from": start}
    first = model.action_token_ids.start
    captured = Captured(model)
    grid = int(round(model.vision_backbone.featurizer.patch_embed.num_patches ** 0.5))
    weights = {"aux": args.aux_weight, "dense": args.dense_weight, "ground": args.ground_weight}
    model.train()
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "metrics.jsonl").open("a")
    bar = tqdm(range(start, steps), desc=out.name, initial=start, total=steps)
    began = last_checkpoint = time.perf_counter()
    for step in bar:
        rng = np.random.default_rng([args.seed, step, len(data)])
        batch = data.batch(model, rng.integers(0, len(data), size=args.batch_size), rng)
        out_actions = model.action_forward(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        targets = batch["input_ids"][:, -7:] - first
        action_loss = smoothed_action_loss(out_actions.action_logits, targets, args.bin_sigma,
                                           args.gripper_weight)
        aux = auxiliary_losses(heads, captured, out_actions, batch, grid)
        loss = action_loss + sum(weights[k] * v for k, v in aux.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if not torch.isfinite(grad_norm):
            raise FloatingPointError(f"non-finite gradient at step {step}; last checkpoint {latest_checkpoint(out)}")
        optimizer.step()
        scheduler.step()
        if step % 25 == 0 or step == steps - 1:
            accuracy = (out_actions.action_logits.argmax(-1) == targets).float().mean().item()
            record = {"step": step + 1, "loss": loss.item(), "action_loss": action_loss.item(),
                      **{f"{k}_loss": v.item() for k, v in aux.items()}, "token_accuracy": accuracy,
                      "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm.item(),
                      "seconds": time.perf_counter() - began}
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{action_loss.item():.3f}", ground=f"{aux['ground'].item():.3f}",
                            acc=f"{accuracy:.2f}")
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == steps:
            save_checkpoint(out, step + 1, model, {"heads": heads.state_dict(),
                                                   "optimizer": optimizer.state_dict(),
                                                   "scheduler": scheduler.state_dict()})
            clock.record(out.name, time.perf_counter() - last_checkpoint)
            last_checkpoint = time.perf_counter()
    log.close()
    captured.remove()
    model.eval()
    return {"steps": steps, "resumed_from": start, "seconds": time.perf_counter() - began}


# ---- recipe ----------------------------------------------------------------------------------------------
def record_layouts(directory: Path, tasks, per_task: int, num_envs: int, camera: str, clock: StageClock | None,
                   seed: int = LAYOUT_SEED) -> Path:
    """`per_task` reset states per task, each a one-step episode labelled with the expert's first action
    (seeds `seed * 10^6 + task * 10^4 + k`); resumable per task file."""
    if not (directory / "summary.json").exists():
        began = time.perf_counter()
        directory.mkdir(parents=True, exist_ok=True)
        envs = make_env(tasks=tasks, num_envs=num_envs, image_size=128, camera=camera)
        try:
            for task in tqdm(resolve_tasks(tasks), desc="layouts"):
                record_task_file(directory / f"{task}.hdf5", envs, ScriptedExpert(num_envs), task, seed,
                                 lambda obs, info, action: action, per_task, max_steps=1, keep_failures=True)
        finally:
            envs.close()
        atomic_write_json(directory / "summary.json", {"per_task": per_task, "seconds": time.perf_counter() - began})
        if clock is not None:
            clock.record("layouts", time.perf_counter() - began)
    return directory


def eval_table(result: dict) -> str:
    lines = ["| task | split | success |", "|---|---|---|"]
    for task, rate in sorted(result["success_rate"].items(), key=lambda kv: (kv[0] not in TASKS_IND, kv[0])):
        lines.append(f"| {task} | {'IND' if task in TASKS_IND else 'OOD'} | {100 * rate:.0f}% |")
    return "\n".join(lines) + "\n"


def rollout_policy(model, args: argparse.Namespace) -> GripperHysteresis:
    """The policy the rollouts run: `model` with `--decode` and the gripper hysteresis of the card."""
    return GripperHysteresis(model, switch_after=args.gripper_switch_after, decode=args.decode)


def initial_model(name_or_path: str, seed: int) -> tuple[nn.Module, nn.ModuleDict, dict]:
    """`--init`'s model in fp32, its training heads (fresh from `seed` when it has none saved) and its card
    ({} if none)."""
    model = load_vla(name_or_path, dtype=torch.float32)
    torch.manual_seed(seed)
    heads = make_heads(model.config.text_config.hidden_size)
    directory = shipped_preset_dir(name_or_path) or Path(name_or_path).expanduser()
    if (directory / HEADS_FILE).exists():
        heads.load_state_dict(load_file(str(directory / HEADS_FILE)))
    card = directory / "model_card.json"
    return model, heads, json.loads(card.read_text()) if card.exists() else {}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock(out / "stage_seconds.json")
    tasks = list(TASKS_IND[: args.tasks_limit]) if args.tasks_limit else "ind"
    eval_tasks = [*TASKS_IND[: args.tasks_limit], *TASKS_OOD[: args.tasks_limit]] if args.tasks_limit else "all"

    init = initial_model(args.init, args.seed) if args.init else None  # a bad --init fails before any work
    demos = out / "demos"
    if not (demos / "norm_stats.json").exists():
        generate_demos(demos, tasks=tasks, episodes_per_task=args.episodes_per_task, seed=DEMO_SEED,
                       num_workers=args.num_envs, noise_std=args.demo_noise, camera=args.camera)
    if "demos" not in clock.seconds:  # generation's own total, which also counts runs interrupted and resumed
        clock.record("demos", json.loads((demos / "summary.json").read_text())["seconds"])
    if init is None:
        model = build_model(preset_config(args.preset, norm_stats=DemoDataset(demos).norm_stats), seed=args.seed)
        torch.manual_seed(args.seed)
        heads, init_card = make_heads(model.config.text_config.hidden_size), {}
    else:
        model, heads, init_card = init
    # the model's own statistics: the targets must be normalised as its predictions are unnormalised
    data = TrainSet(model, model.config.norm_stats)
    demo_samples = data.add(demos)
    if args.layouts_per_task:
        data.add(record_layouts(out / "layouts", tasks, args.layouts_per_task, args.num_envs, args.camera, clock))
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; {demo_samples} demo samples")
    report = {}
    if args.steps:
        report["train_0"] = train_stage(model, heads, data, args.steps, args.lr, out / "train_0", args, clock)

    earlier_seeds = init_card.get("seeds", {}).get("dagger", [])
    first_round = max(earlier_seeds, default=DAGGER_SEED) - DAGGER_SEED + 1
    rounds = range(first_round, first_round + args.dagger_rounds)
    for r in rounds:
        began = time.perf_counter()
        dagger = out / f"dagger_{r}"
        if not (dagger / "summary.json").exists():
            collect_dagger(rollout_policy(model, args), dagger, tasks=tasks,
                           episodes_per_task=args.dagger_episodes,
                           seed=DAGGER_SEED + r, num_workers=args.num_envs, camera=args.camera)
            clock.record(f"dagger_{r}", time.perf_counter() - began)
        report[f"dagger_{r}"] = json.loads((dagger / "summary.json").read_text())["learner_success_rate"]
        print(f"DAgger round {r}: learner success {report[f'dagger_{r}']:.2f} on its rollouts")
        data.add(dagger)
        report[f"train_{r}"] = train_stage(model, heads, data, args.dagger_steps, args.dagger_lr,
                                           out / f"train_{r}", args, clock)
        report[f"train_{r}"]["samples"] = len(data)

    began = time.perf_counter()
    eval_path = out / "eval.json"
    if not eval_path.exists():
        evaluate(rollout_policy(model, args), tasks=eval_tasks, episodes_per_task=args.eval_episodes,
                 num_envs=args.num_envs, seed=EVAL_SEED, output=eval_path, camera=args.camera)
        clock.record("eval", time.perf_counter() - began)
    result = json.loads(eval_path.read_text())
    success = success_summary(result["episodes"])
    final = out / "final"
    model.to(torch.float16).save_pretrained(final)
    save_file(heads.state_dict(), str(final / HEADS_FILE))
    hours = sum(clock.seconds.values()) / 3600
    card = {
        "preset": init_card.get("preset", args.preset),  # init_card is {} from scratch
        "parameters": sum(p.numel() for p in model.parameters()),
        "lm_parameters": sum(p.numel() for p in model.language_model.parameters()),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "training": report, "demo_samples": demo_samples,
        "seeds": {"demos": DEMO_SEED, "layouts": LAYOUT_SEED, "evaluation": EVAL_SEED,
                  "dagger": [*earlier_seeds, *(DAGGER_SEED + r for r in rounds)]},
        "stage_seconds": clock.seconds, "total_hours": hours,
        "init": None if init is None else {"from": args.init, "success": init_card.get("success"),
                                           "stage_seconds": init_card.get("stage_seconds")},
        "lineage_hours": hours + init_card.get("lineage_hours", init_card.get("total_hours", 0.0)),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} torch threads",
        "ind_success_rate": result["ind_success_rate"], "ood_success_rate": result["ood_success_rate"],
        "success": success, "eval_episodes_per_task": args.eval_episodes,
        "mean_episode_length": result["mean_episode_length"],
        "reproduce": "vla-compress evaluate tiny-maniskill --tasks all "
                     f"--episodes {args.eval_episodes} --seed {EVAL_SEED} --num-envs {args.num_envs} "
                     f"--camera {args.camera} --decode {args.decode} "
                     f"--gripper-switch-after {args.gripper_switch_after}",
        "camera": args.camera,
    }
    for name, text in (("model_card.json", json.dumps(card, indent=2)), ("eval_by_task.md", eval_table(result))):
        (final / name).write_text(text)
    shutil.copy(eval_path, final / "eval.json")
    print(json.dumps({"success": success, "stage_seconds": clock.seconds}, indent=2))
    if not args.no_ship:
        shutil.rmtree(PACKAGE_PRESET_DIR, ignore_errors=True)
        shutil.copytree(final, PACKAGE_PRESET_DIR)
        print(f"shipped to {PACKAGE_PRESET_DIR}")


if __name__ == "__main__":
    main()
