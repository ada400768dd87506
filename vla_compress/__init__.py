"""vla-compress: prune, recover and quantize vision-language-action policies such as OpenVLA."""

from .evaluation import GripperHysteresis
from .loading import load_vla
from .modeling import (
    ActionTokenizer,
    OpenVLAConfig,
    OpenVLAForActionPrediction,
    OpenVLAProcessor,
    VLACacheConfig,
    VLACachePolicy,
    component_sizes,
)
from .pruning import BlockPruning, FlapPruning, MagnitudePruning, PruneReport, WandaPruning, prune
from .quantization import AtenConfig, BnbConfig, GPTQConfig, QuantoConfig, quantize
from .recovery import PPOConfig, SFTConfig, recover

__version__ = "0.1.0"
__all__ = [
    "ActionTokenizer", "AtenConfig", "BlockPruning", "BnbConfig", "FlapPruning", "GPTQConfig", "GripperHysteresis",
    "MagnitudePruning", "OpenVLAConfig", "OpenVLAForActionPrediction", "OpenVLAProcessor", "PPOConfig", "PruneReport",
    "QuantoConfig", "SFTConfig", "VLACacheConfig", "VLACachePolicy", "WandaPruning", "component_sizes", "load_vla",
    "prune", "quantize", "recover",
]
