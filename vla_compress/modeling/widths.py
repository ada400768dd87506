"""Per-layer widths of a (structurally pruned) Llama-style decoder.

Hugging Face decoders build every layer at the config's global width. After block-wise pruning
each layer has its own number of heads, KV heads and MLP channels; `llm_layer_widths` in
`OpenVLAConfig` records them and `resize_decoder_layers` rebuilds the layers at those widths
(before weights are loaded), so pruned checkpoints load without the dense model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn


@dataclass(frozen=True)
class LayerWidth:
    """Widths of one decoder layer."""

    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def decoder_layers(language_model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Hugging Face causal LM (`model.layers`)."""
    return language_model.model.layers


def layer_width(layer: nn.Module) -> LayerWidth:
    """Read the current widths of a decoder layer from its weight shapes."""
    attn, mlp = layer.self_attn, layer.mlp
    return LayerWidth(
        num_attention_heads=attn.q_proj.out_features // attn.head_dim,
        num_key_value_heads=attn.k_proj.out_features // attn.head_dim,
        intermediate_size=mlp.gate_proj.out_features,
    )


def _resized_linear(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(
        in_features, out_features, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype
    )


def resize_decoder_layer(layer: nn.Module, width: LayerWidth) -> None:
    """Rebuild one layer's projections at `width` (fresh weights; callers load or copy values)."""
    if width.num_attention_heads % max(width.num_key_value_heads, 1) or width.num_key_value_heads < 1:
        raise ValueError(f"invalid layer width {width}: heads must be a positive multiple of KV heads")
    attn, mlp = layer.self_attn, layer.mlp
    hidden, head_dim = attn.q_proj.in_features, attn.head_dim
    q_out, kv_out = width.num_attention_heads * head_dim, width.num_key_value_heads * head_dim
    attn.q_proj = _resized_linear(attn.q_proj, hidden, q_out)
    attn.k_proj = _resized_linear(attn.k_proj, hidden, kv_out)
    attn.v_proj = _resized_linear(attn.v_proj, hidden, kv_out)
    attn.o_proj = _resized_linear(attn.o_proj, q_out, hidden)
    attn.num_key_value_groups = width.num_attention_heads // width.num_key_value_heads
    mlp.gate_proj = _resized_linear(mlp.gate_proj, hidden, width.intermediate_size)
    mlp.up_proj = _resized_linear(mlp.up_proj, hidden, width.intermediate_size)
    mlp.down_proj = _resized_linear(mlp.down_proj, width.intermediate_size, hidden)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = width.intermediate_size


def resize_decoder_layers(language_model: nn.Module, widths: list[dict] | None) -> None:
    """Apply recorded per-layer widths (a list of `LayerWidth` dicts, one per layer)."""
    if not widths:
        return
    layers = decoder_layers(language_model)
    if len(widths) != len(layers):
        raise ValueError(f"llm_layer_widths has {len(widths)} entries for {len(layers)} decoder layers")
    for layer, width in zip(layers, widths):
        width = LayerWidth(**width)
        if width != layer_width(layer):
            resize_decoder_layer(layer, width)


def current_layer_widths(language_model: nn.Module) -> list[dict[str, int]]:
    """Per-layer widths as stored in `OpenVLAConfig.llm_layer_widths`."""
    return [layer_width(layer).to_dict() for layer in decoder_layers(language_model)]
