"""vla-compress: prune, recover and quantize vision-language-action policies such as OpenVLA."""

from .modeling import (
    ActionTokenizer,
    OpenVLAConfig,
    OpenVLAForActionPrediction,
    OpenVLAProcessor,
    component_sizes,
    load_vla,
)
from .pruning import PruneReport, prune
from .quantization import quantize
from .recovery import PPOConfig, SFTConfig, recover

__version__ = "0.1.0"
__all__ = [
    "ActionTokenizer", "OpenVLAConfig", "OpenVLAForActionPrediction", "OpenVLAProcessor", "PPOConfig",
    "PruneReport", "SFTConfig", "component_sizes", "load_vla", "prune", "quantize", "recover",
]
