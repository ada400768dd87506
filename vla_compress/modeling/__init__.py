"""The OpenVLA architecture: config, model, processor, action tokenizer, presets, dense loading
(`vla_compress.load_vla` is the public loader of every checkpoint)."""

from .action_tokenizer import ActionTokenizer, normalize_actions, unnormalize_actions
from .config import OpenVLAConfig, register
from .loading import build_model, resolve_device, resolve_dtype
from .modeling_openvla import ACTION_DIM, OpenVLAForActionPrediction
from .presets import PRESETS, preset_config
from .processing import OpenVLAProcessor, prompt_for
from .size import component_sizes
from .vla_cache import VLACacheConfig, VLACachePolicy

register()

__all__ = [
    "ACTION_DIM", "ActionTokenizer", "OpenVLAConfig", "OpenVLAForActionPrediction",
    "OpenVLAProcessor", "PRESETS", "build_model", "component_sizes", "normalize_actions", "preset_config", "prompt_for",
    "register", "resolve_device", "resolve_dtype", "unnormalize_actions", "VLACacheConfig", "VLACachePolicy",
]
