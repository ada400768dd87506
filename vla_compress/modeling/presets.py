"""Named model configurations. Presets are configs, not code paths.

`openvla-7b` has the public checkpoint's dims (construct it on the meta device to count its
parameters without RAM). The small presets keep its structure (fused DINOv2 + SigLIP timm ViTs,
3-layer GELU projector, Llama LM, action tokens at the end of the vocabulary) at CPU-friendly
dims, with ~90% of the parameters in the LM as in openvla-7b, so pruning the LM matters as much.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .config import OpenVLAConfig

LLAMA2_7B = dict(
    model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, vocab_size=32064, max_position_embeddings=2048,
    rms_norm_eps=1e-6, pad_token_id=32000, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
)


def _tiny_vit(embed_dim: int, depth: int, heads: int) -> dict:
    return dict(embed_dim=embed_dim, depth=depth, num_heads=heads, patch_size=14)


def _small_llama(hidden: int, layers: int, heads: int, kv_heads: int, mlp: int) -> dict:
    return dict(
        model_type="llama", hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads, vocab_size=576,
        max_position_embeddings=512, rms_norm_eps=1e-6, pad_token_id=512, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    )


PRESETS: dict[str, dict] = {
    "openvla-7b": dict(vision_backbone_id="dinosiglip-vit-so-224px", text_config=LLAMA2_7B, pad_token_id=32000),
    # ~5.5M parameters, 90% in the LM: tests and quick runs (random weights).
    "tiny": dict(
        vision_backbone_id="dinosiglip-vit-so-224px", image_sizes=[112, 112],
        timm_kwargs=[_tiny_vit(64, 3, 2), _tiny_vit(64, 3, 2)],
        text_config=_small_llama(hidden=256, layers=6, heads=8, kv_heads=8, mlp=704),
        pad_token_id=512, llm_max_length=512,
    ),
    # openvla-7b's shape at a width a CPU runs, for speed benchmarks (random weights): the fused ViT pair at
    # 224 px / patch 14 (256 patches, ~10% of the FLOPs as at 7B), and a Llama of openvla-7b's depth and
    # head layout (32 layers, 128-dim heads, MLP 2.69x wide) 512 wide; the small presets' 576-id vocabulary.
    "openvla-7b-proxy": dict(
        vision_backbone_id="dinosiglip-vit-so-224px", image_sizes=[224, 224],
        timm_kwargs=[_tiny_vit(192, 12, 3), _tiny_vit(192, 12, 3)],
        text_config=_small_llama(hidden=512, layers=32, heads=4, kv_heads=4, mlp=1376),
        pad_token_id=512, llm_max_length=512,
    ),
    # The architecture of the shipped `tiny-maniskill` (benchmarks/train_base.py, docs/model_card.md):
    # one DINOv2-style ViT (128 wide, 8 x 8 patches of 16 px at the suite's 128 px renders, so frames are
    # never resized) and an 8-layer Llama 128 wide, 2.8M parameters, 67% in the LM: sized for training
    # from scratch on a 2-core CPU.
    "tiny-policy": dict(
        vision_backbone_id="dinov2-vit-l-224px", image_sizes=[128],
        timm_kwargs=[dict(embed_dim=128, depth=4, num_heads=4, patch_size=16)],
        text_config=_small_llama(hidden=128, layers=8, heads=4, kv_heads=4, mlp=384),
        pad_token_id=512, llm_max_length=512,
    ),
}
# Presets whose trained weights ship inside the package (see docs/model_card.md).
SHIPPED_PRESETS: dict[str, str] = {"tiny-maniskill": "tiny-maniskill"}


def preset_config(name: str, **overrides) -> OpenVLAConfig:
    """The `OpenVLAConfig` of a preset; `overrides` replace top-level fields or `text_config` keys."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is unknown; allowed: {sorted(PRESETS)}")
    fields = {**PRESETS[name]}
    text_overrides = overrides.pop("text_config", {})
    fields["text_config"] = {**fields["text_config"], **text_overrides}
    return OpenVLAConfig(**{**fields, **overrides})


def shipped_preset_dir(name: str) -> Path | None:
    """Directory of a shipped, trained preset (package data), or None when not built."""
    if name not in SHIPPED_PRESETS:
        return None
    path = Path(str(resources.files("vla_compress") / "presets" / SHIPPED_PRESETS[name]))
    return path if (path / "config.json").exists() else None
