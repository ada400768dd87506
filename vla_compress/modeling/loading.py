"""`load_vla`: a preset name, a local OpenVLA directory, or a Hugging Face hub id -> model + processor."""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError

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
        return json.loads(config.read_text()).get("model_type") == "openvla"
    except json.JSONDecodeError as error:
        raise ValueError(f"name_or_path={str(path)!r}: config.json is not valid JSON ({error})") from error


def _load_dir(path: Path, device: str | torch.device, dtype: torch.dtype | None) -> OpenVLAForActionPrediction:
    register()
    if not _is_openvla_dir(path):
        raise ValueError(f"name_or_path={str(path)!r} has no config.json with model_type 'openvla'")
    config = OpenVLAConfig.from_pretrained(path)
    if config.quantization:
        from ..quantization import load_quantized  # quantized checkpoints rebuild their layers first

        return load_quantized(path, config, device=device, dtype=dtype)
    try:
        model = OpenVLAForActionPrediction.from_pretrained(path, config=config, dtype=dtype or "auto")
    except (OSError, SafetensorError) as error:
        raise ValueError(f"name_or_path={str(path)!r}: the weights are missing or corrupted ({error})") from error
    model.processor = OpenVLAProcessor.from_pretrained(path, config)
    return model.to(device).eval()


def load_vla(name_or_path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
             seed: int = 0) -> OpenVLAForActionPrediction:
    """Load an OpenVLA policy with its processor attached (`model.processor`).

    `name_or_path`: a preset (`"tiny"`, `"openvla-7b"`: random weights; `"tiny-maniskill"`: the
    shipped trained policy), a local directory in the OpenVLA Hugging Face format, or a hub id such
    as `"openvla/openvla-7b"` (downloaded with huggingface_hub). `dtype` None keeps the stored one
    (float32 for the shipped presets, which are stored in float16).
    """
    dtype = resolve_dtype(dtype)
    name = str(name_or_path)
    if name in SHIPPED_PRESETS:
        path = shipped_preset_dir(name)
        if path is None:
            raise ValueError(f"preset {name!r} has no trained weights in this install; "
                             "build it with `python benchmarks/train_base.py`")
        return _load_dir(path, device, dtype or torch.float32)  # stored in fp16 to stay small
    if name in PRESETS:
        if name == "openvla-7b":
            warnings.warn("preset 'openvla-7b' has random weights; load 'openvla/openvla-7b' for the real policy",
                          stacklevel=2)
        with _built_on(device, dtype):
            model = build_model(preset_config(name), seed=seed)
        return model.to(device=device, dtype=dtype).eval()
    path = Path(name).expanduser()
    if path.exists():
        return _load_dir(path, device, dtype)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        return _load_dir(Path(snapshot_download(name, allow_patterns=HUB_FILES)), device, dtype)
    allowed = sorted([*PRESETS, *SHIPPED_PRESETS])
    raise ValueError(f"name_or_path={name!r} is neither a preset ({allowed}), an existing directory, "
                     "nor a hub id of the form 'owner/name'")
