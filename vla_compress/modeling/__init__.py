"""The OpenVLA architecture: config, model, processor, action tokenizer, presets, loading."""

from .action_tokenizer import ActionTokenizer, normalize_actions, unnormalize_actions
from .config import OpenVLAConfig, register
from .loading import build_model, load_vla, resolve_dtype
from .modeling_openvla import ACTION_DIM, OpenVLAForActionPrediction
from .presets import PRESETS, preset_config
from .processing import OpenVLAProcessor, prompt_for
from .size import component_sizes

register()

__all__ = [
    "ACTION_DIM", "ActionTokenizer", "OpenVLAConfig", "OpenVLAForActionPrediction", "OpenVLAProcessor", "PRESETS",
    "build_model", "component_sizes", "load_vla", "normalize_actions", "preset_config", "prompt_for",
    "register", "resolve_dtype", "unnormalize_actions",
]
