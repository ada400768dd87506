"""Presets, dense and pruned checkpoints: a preset name, a local OpenVLA directory, or a hub id -> model.

`load_from` resolves the name and hands checkpoint directories to a loader; `vla_compress.load_vla`
(one level up, `vla_compress/loading.py`) passes the loader that also rebuilds quantized layers, so
this package never imports `vla_compress.quantization` (arrows point down).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .config import OpenVLAConfig, register
from .modeling_openvla import OpenVLAForActionPrediction
from .presets import PRESETS, SHIPPED_PRESETS, preset_config, shipped_preset_dir
from .processing import OpenVLAProcessor
from .text_tokenizer import build_word_tokenizer

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
HUB_FILES = ["config.json", "*.safetensors", "*.json", "tokenizer.model"]


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """`"bf16"`, `"float32"`, a `torch.dtype`, or None (keep the stored dtype)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is unknown; allowed: {sorted(DTYPES)} or a torch.dtype")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` as a `torch.device` that exists here; ValueError naming it and the allowed devices."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={str(device)!r} is unknown; allowed: {_allowed_devices()}") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (parsed.index or 0) >= count:
            here = "no CUDA device here" if count == 0 else f"{count} CUDA device(s) here"
            raise ValueError(f"device={str(device)!r} is not available; allowed: {_allowed_devices()} ({here})")
    return parsed


def _allowed_devices() -> str:
    count = torch.cuda.device_count()
    cuda = ["cuda", *(f"cuda:{i}" for i in range(count))] if count else []
    return ", ".join(["cpu", *cuda, "meta"])


def build_model(config: OpenVLAConfig, seed: int = 0) -> OpenVLAForActionPrediction:
    """A randomly initialised model with a processor.

    The processor's tokenizer is the small presets' word-level one, sized to the config's vocabulary
    (action tokens last, as OpenVLA's). For `openvla-7b` it stands in for Llama 2's SentencePiece model,
    which a random-weight model has no use for beyond shapes (profiling); real checkpoints bring theirs.
    """
    torch.manual_seed(seed)
    model = OpenVLAForActionPrediction(config)
    tokenizer = build_word_tokenizer(vocab_size=config.action_vocab_end, n_action_bins=config.n_action_bins)
    model.processor = OpenVLAProcessor.from_config(config, tokenizer)
    return model


@contextmanager
def _built_on(device: str | torch.device, dtype: torch.dtype | None):
    """Create parameters directly on `device` in `dtype` (a 7B model never passes through host fp32)."""
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _is_openvla_dir(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"name_or_path={str(path)!r}: config.json is not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"name_or_path={str(path)!r}: config.json holds a {type(data).__name__}, not a JSON "
                         "object of settings; restore it from the checkpoint's source")
    return data.get("model_type") == "openvla"


DirectoryLoader = Callable[[Path, OpenVLAConfig, "str | torch.device", "torch.dtype | None"],
                           OpenVLAForActionPrediction]


def load_dense(path: Path, config: OpenVLAConfig, device: str | torch.device,
               dtype: torch.dtype | None) -> OpenVLAForActionPrediction:
    """A dense or pruned (per-layer widths) checkpoint directory with its processor."""
    if config.quantization:
        raise ValueError(f"name_or_path={str(path)!r} is a quantized checkpoint; load it with vla_compress.load_vla")
    check_weight_shapes(path, config)
    model = OpenVLAForActionPrediction.from_pretrained(path, config=config, dtype=dtype or "auto")
    model.processor = OpenVLAProcessor.from_pretrained(path, config)
    return model.to(device).eval()


def check_weight_shapes(path: Path, config: OpenVLAConfig) -> None:
    """ValueError when a stored tensor's shape differs from what `config` builds (e.g. pruned weights beside
    a dense config.json); reads only the safetensors headers."""
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in OpenVLAForActionPrediction(config).state_dict().items()}
    differing = []
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as weights:
            for key in weights.keys():
                stored = tuple(weights.get_slice(key).get_shape())
                if key in expected and stored != expected[key]:
                    differing.append(f"{key} {list(stored)} (config: {list(expected[key])})")
    if differing:
        shown = "; ".join(differing[:3]) + (f"; and {len(differing) - 3} more" if len(differing) > 3 else "")
        raise ValueError(f"checkpoint {str(path)!r} does not match its config: {len(differing)} tensors have "
                         f"other shapes: {shown}; config.json and the weights come from different models")


def _load_dir(path: Path, device: str | torch.device, dtype: torch.dtype | None,
              load_directory: DirectoryLoader) -> OpenVLAForActionPrediction:
    register()
    if not _is_openvla_dir(path):
        raise ValueError(f"name_or_path={str(path)!r} has no config.json with model_type 'openvla'")
    config = OpenVLAConfig.from_pretrained(path)
    try:
        return load_directory(path, config, device, dtype)
    except FileNotFoundError:
        raise  # a quantized directory without weights says so itself
    except (OSError, SafetensorError, json.JSONDecodeError) as error:
        raise ValueError(f"name_or_path={str(path)!r}: the weights or processor files are missing or corrupted "
                         f"({error})") from error


def load_from(name_or_path: str | Path, device: str | torch.device, dtype: str | torch.dtype | None, seed: int,
              load_directory: DirectoryLoader) -> OpenVLAForActionPrediction:
    """`vla_compress.load_vla`'s name resolution; checkpoint directories are read by `load_directory`."""
    dtype = resolve_dtype(dtype)
    resolve_device(device)
    name = str(name_or_path)
    if name in SHIPPED_PRESETS:
        path = shipped_preset_dir(name)
        if path is None:
            raise ValueError(f"preset {name!r} has no trained weights in this install; "
                             "build it with `python benchmarks/train_base.py`")
        return _load_dir(path, device, dtype or torch.float32, load_directory)  # stored in fp16 to stay small
    if name in PRESETS:
        if name == "openvla-7b":
            warnings.warn("preset 'openvla-7b' has random weights; load 'openvla/openvla-7b' for the real policy",
                          stacklevel=2)
        with _built_on(device, dtype):
            model = build_model(preset_config(name), seed=seed)
        return model.to(device=device, dtype=dtype).eval()
    path = Path(name).expanduser()
    if path.exists():
        return _load_dir(path, device, dtype, load_directory)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        return _load_dir(Path(snapshot_download(name, allow_patterns=HUB_FILES)), device, dtype, load_directory)
    allowed = sorted([*PRESETS, *SHIPPED_PRESETS])
    raise ValueError(f"name_or_path={name!r} is neither a preset ({allowed}), an existing directory, "
                     "nor a hub id of the form 'owner/name'")
