"""`OpenVLAConfig`: the openvla-7b `config.json` schema, plus the fields compression adds."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

# Vision backbone ids used by OpenVLA checkpoints -> (timm model ids, image sizes).
VISION_BACKBONES: dict[str, tuple[list[str], list[int]]] = {
    "dinosiglip-vit-so-224px": (
        ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
        [224, 224],
    ),
    "dinov2-vit-l-224px": (["vit_large_patch14_reg4_dinov2.lvd142m"], [224]),
    "siglip-vit-so400m": (["vit_so400m_patch14_siglip_224"], [224]),
}
IMAGE_RESIZE_STRATEGIES = ("resize-naive", "letterbox", "resize-crop")


@strict
class OpenVLAConfig(PreTrainedConfig):
    """Configuration of an OpenVLA policy (vision backbone(s) + projector + causal LM).

    The fields are those of openvla-7b's `config.json`. `timm_kwargs` shrinks the timm backbones
    for the small presets; `llm_layer_widths` records per-layer widths after structured pruning;
    `quantization` records how the LM was quantized. All three are `None` for a dense openvla-7b.
    """

    model_type = "openvla"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    vision_backbone_id: str = "dinosiglip-vit-so-224px"
    llm_backbone_id: str = "llama2-7b-pure"
    arch_specifier: str = "no-align+gelu-mlp"
    use_fused_vision_backbone: bool | None = None
    image_resize_strategy: str = "resize-naive"
    text_config: dict | PreTrainedConfig | None = None
    llm_max_length: int = 2048
    pad_token_id: int | None = 32000
    pad_to_multiple_of: int = 64
    output_projector_states: bool = False
    norm_stats: dict | None = None
    n_action_bins: int = 256
    timm_model_ids: list | None = None
    timm_override_act_layers: list | None = None
    image_sizes: list | None = None
    timm_kwargs: list | None = None
    llm_layer_widths: list | None = None
    quantization: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if self.vision_backbone_id not in VISION_BACKBONES and self.timm_model_ids is None:
            raise ValueError(
                f"vision_backbone_id={self.vision_backbone_id!r} is unknown; allowed: "
                f"{sorted(VISION_BACKBONES)} (or pass timm_model_ids and image_sizes)"
            )
        if self.image_resize_strategy not in IMAGE_RESIZE_STRATEGIES:
            raise ValueError(
                f"image_resize_strategy={self.image_resize_strategy!r}; allowed: {IMAGE_RESIZE_STRATEGIES}"
            )
        default_ids, default_sizes = VISION_BACKBONES.get(self.vision_backbone_id, (None, None))
        self.timm_model_ids = list(self.timm_model_ids or default_ids)
        self.image_sizes = list(self.image_sizes or default_sizes)
        n = len(self.timm_model_ids)
        if self.use_fused_vision_backbone is None:
            self.use_fused_vision_backbone = n > 1
        if self.timm_override_act_layers is None:
            self.timm_override_act_layers = [None] * n
        if self.timm_kwargs is None:
            self.timm_kwargs = [{} for _ in range(n)]
        if not (len(self.image_sizes) == len(self.timm_kwargs) == n):
            raise ValueError("timm_model_ids, image_sizes and timm_kwargs must have one entry per backbone")
        super().__post_init__(**kwargs)

    @property
    def action_vocab_end(self) -> int:
        """Size of the unpadded vocabulary; the action tokens are its last `n_action_bins` ids."""
        return self.text_config.vocab_size - self.pad_to_multiple_of

    @property
    def action_token_ids(self) -> range:
        return range(self.action_vocab_end - self.n_action_bins, self.action_vocab_end)


def register() -> None:
    """Make `AutoConfig.from_pretrained` recognise `model_type: "openvla"`."""
    try:
        AutoConfig.register("openvla", OpenVLAConfig)
    except ValueError:  # already registered
        pass
