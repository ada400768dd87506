"""Hardware profile of a policy: model bytes, peak memory, latency per action and throughput.

Every model is measured by the same procedure, so rows of a table compare: random uint8 camera
frames and instructions of the suite, `warmup` untimed calls, then `iters` timed calls of
`predict_action` at batch 1 (latency, throughput) and at `batch_size` (throughput), with CUDA
synchronisation around each call on a GPU. A stateful policy (one with `reset()`, such as
`VLACachePolicy`, whose speed depends on how little consecutive frames change) is profiled the same
way on the consecutive frames of a recorded episode instead, and the result says so (`inputs`).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from vla_compress.envs.tasks import ALL_TASKS, instruction
from vla_compress.modeling.modeling_openvla import check_decode
from vla_compress.modeling.size import component_sizes


@dataclass
class ProfileResult:
    """Memory, latency and throughput of one model; `to_dict()` is JSON-ready.

    `model_bytes` is the stored size of parameters and buffers (quantization scales included).
    `peak_memory_bytes` is `torch.cuda.max_memory_allocated` during profiling on a GPU, or the
    process's peak resident set size since it started (`peak_memory_kind` says which) on a CPU.
    `inputs` says what was fed (random frames, or a recorded episode's consecutive frames);
    `policy_info` is a stateful policy's `describe()` over the profiled calls (None for a model).
    """

    device: str
    dtype: str
    params: int
    model_bytes: int
    component_bytes: dict[str, int]
    peak_memory_bytes: int
    peak_memory_kind: str
    latency_ms_median: float
    latency_ms_p90: float
    latency_ms_mean: float
    throughput_batch1: float  # actions per second at batch 1
    throughput_batch: float  # actions per second at `batch_size`
    batch_size: int
    warmup: int
    iters: int
    image_size: int
    torch_threads: int
    latencies_ms: list[float] = field(default_factory=list)
    decode: str = "dynamic"  # predict_action's decode path
    inputs: str = "random frames"
    policy_info: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _validate(batch_size: int, warmup: int, iters: int, image_size: int, seed: int) -> None:
    for name, value, low in (("batch_size", batch_size, 1), ("warmup", warmup, 0), ("iters", iters, 1),
                             ("image_size", image_size, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _model_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    first = next(iter(model.parameters()), None)
    if first is None:
        raise ValueError("model has no parameters")
    actual = first.device
    if device is None:
        return actual
    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device={device!r} is not a torch device") from error
    if wanted.type != actual.type:
        raise ValueError(f"device={device!r} but the model is on {actual}; move the model first")
    return actual


def _inputs(batch: int, image_size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    images = rng.integers(0, 256, size=(batch, image_size, image_size, 3), dtype=np.uint8)
    tasks = rng.choice(len(ALL_TASKS), size=batch)
    return images, [instruction(ALL_TASKS[int(i)]) for i in tasks]


def _module(model) -> nn.Module:
    """The `nn.Module` whose bytes are profiled: the model, or a policy's `.model`."""
    module = model if isinstance(model, nn.Module) else getattr(model, "model", None)
    if not isinstance(module, nn.Module):
        raise ValueError(f"a {type(model).__name__} is neither a model nor a policy with a .model to profile")
    return module


def _episodes(episode: Mapping | Sequence[Mapping]) -> list[tuple[np.ndarray, str]]:
    """`episode` (one or a list of {"images": uint8 [T, H, W, 3], "instruction": str}) as (frames, text) pairs."""
    episodes = [episode] if isinstance(episode, Mapping) else list(episode)
    if not episodes:
        raise ValueError("episode is an empty list; expected {'images': uint8 [T, H, W, 3], 'instruction': str}")
    checked = []
    for i, ep in enumerate(episodes):
        frames = np.asarray(ep.get("images") if isinstance(ep, Mapping) else None)
        text = ep.get("instruction") if isinstance(ep, Mapping) else None
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 2:
            raise ValueError(f"episode[{i}]['images'] must be uint8 [T, H, W, 3] with T >= 2 consecutive frames, "
                             f"got {frames.dtype} {frames.shape}")
        if not isinstance(text, str):
            raise ValueError(f"episode[{i}]['instruction'] must be a string, got {text!r}")
        checked.append((frames, text))
    if len({frames.shape[1:] for frames, _ in checked}) != 1:
        raise ValueError("episode: every episode's frames must have one size")
    return checked


def _timed_calls(model, device: torch.device, batch: int, warmup: int, iters: int, image_size: int,
                 rng: np.random.Generator, decode: str,
                 episodes: list[tuple[np.ndarray, str]] | None = None) -> list[float]:
    """Seconds per `predict_action` call, fresh random inputs each call (inputs built outside the timer).

    With `episodes`, call t feeds frame t of each row's episode (row r plays episode r mod their count, in
    lockstep) and every episode start, the first call included, resets a stateful policy (untimed)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    options = {} if decode == "dynamic" else {"decode": decode}  # policies without decode= still profile
    reset: Callable[[], Any] | None = getattr(model, "reset", None) if episodes else None
    length = min(len(frames) for frames, _ in episodes) if episodes else 0
    times = []
    for i in range(warmup + iters):
        if episodes:
            t = i % length
            if t == 0 and callable(reset):
                reset()
            rows = [episodes[r % len(episodes)] for r in range(batch)]
            images, texts = np.stack([frames[t] for frames, _ in rows]), [text for _, text in rows]
        else:
            images, texts = _inputs(batch, image_size, rng)
        sync()
        start = time.perf_counter()
        model.predict_action(images, texts, **options)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def profile(model: Any, batch_size: int = 8, warmup: int = 3, iters: int = 20,
            device: str | torch.device | None = None, image_size: int = 128, seed: int = 0,
            decode: str = "dynamic", episode: Mapping | Sequence[Mapping] | None = None) -> ProfileResult:
    """Profile `model.predict_action`: bytes, peak memory, batch-1 latency (median, p90), throughput.

    `device` None uses the model's device; otherwise it must be the model's device type.
    `image_size` is the camera frame size fed to the processor (the suite renders 128 px). `decode` is
    `predict_action`'s ("dynamic", "static", "compiled" or "frozen": compile time falls in the warm-up calls).

    `model` may also be a policy wrapping one (`.model`, whose bytes are counted). A stateful policy
    (with `reset()`, e.g. `VLACachePolicy`) needs consecutive frames: `episode` is a recorded episode
    `{"images": uint8 [T, H, W, 3], "instruction": str}` (or a list of them: batch row r plays episode
    r mod their count). Calls then replay its frames in order, at batch 1 and at `batch_size`, and the
    policy is reset at the episode's start and each time the frames start over (the shortest episode's
    length); `image_size` is then the frames' own. `ProfileResult.inputs` records what was fed.
    """
    _validate(batch_size, warmup, iters, image_size, seed)
    check_decode(decode)
    if not callable(getattr(model, "predict_action", None)):
        raise ValueError("model must have predict_action(images, instructions)")  # noqa: TRY004
    module = _module(model)
    stateful = callable(getattr(model, "reset", None))
    episodes = _episodes(episode) if episode is not None else None
    if stateful and episodes is None:
        raise ValueError(f"a {type(model).__name__} is stateful (reset() per episode): profile it on consecutive "
                         "frames, episode={'images': uint8 [T, H, W, 3], 'instruction': str}")
    inputs = f"random {image_size} px frames"
    if episodes:
        length, image_size = min(len(frames) for frames, _ in episodes), int(episodes[0][0].shape[1])
        inputs = (f"episode frames: {len(episodes)} episode(s) of {length} consecutive {image_size} px frames "
                  "replayed in order, again from the start when they run out"
                  + ("; the policy reset at each start" if stateful else ""))
    if callable(getattr(model, "clear_stats", None)):
        model.clear_stats()
    device = _model_device(module, device)
    sizes = component_sizes(module)
    rng = np.random.default_rng(seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():  # not inference_mode: quanto int4 weights then fail ("version_counter")
            single = _timed_calls(model, device, 1, warmup, iters, image_size, rng, decode, episodes)
            batched = _timed_calls(model, device, batch_size, warmup, iters, image_size, rng, decode, episodes)
    finally:
        module.train(was_training)
    if device.type == "cuda":
        peak, kind = int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    else:
        peak, kind = _peak_rss_bytes(), "process_peak_rss"
    latencies = [1e3 * t for t in single]
    return ProfileResult(
        device=str(device), dtype=str(next(module.parameters()).dtype).removeprefix("torch."),
        params=sizes["total"].params, model_bytes=sizes["total"].bytes,
        component_bytes={name: size.bytes for name, size in sizes.items()},
        peak_memory_bytes=peak, peak_memory_kind=kind,
        latency_ms_median=statistics.median(latencies),
        latency_ms_p90=float(np.percentile(latencies, 90)),
        latency_ms_mean=statistics.fmean(latencies),
        throughput_batch1=len(single) / sum(single),
        throughput_batch=batch_size * len(batched) / sum(batched),
        batch_size=batch_size, warmup=warmup, iters=iters, image_size=image_size,
        torch_threads=torch.get_num_threads(), latencies_ms=latencies, decode=decode, inputs=inputs,
        policy_info=model.describe() if callable(getattr(model, "describe", None)) else None,
    )
