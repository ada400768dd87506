"""VLA-Cache: training-free reuse of static visual tokens' keys and values across control steps.

Xu et al., "VLA-Cache: Efficient Vision-Language-Action Manipulation via Adaptive Token Caching"
(arXiv 2502.02175, NeurIPS 2025). Within one episode consecutive camera frames differ little, so the
language model's keys and values of most visual tokens could be carried over from the previous step
instead of recomputed. Per control step and environment, as the authors' OpenVLA code does it
(github.com/siyuhsu/vla-cache, `src/openvla`; the LLM side lives in their transformers fork):

1. Static patches (`find_static_patches`, `experiments/robot/vla_cache_utils.py`): the cosine
   similarity of each image patch (raw RGB, one ViT patch: 14 px on the 224 px frame) with the same
   patch of the previous frame; patches at or above 0.996, most similar first, at most 130 of the 256.
2. Task-relevant patches are recomputed anyway (`token_attention_merge`, `get_top_attention_patches`):
   the previous step's attention of the text tokens to the visual tokens at decoder layer 15 of 32,
   averaged over heads and text queries; its 120 highest patches are dropped from the static set.
   What remains, in position order, is the reusable set R.
3. Layer-adaptive reuse fraction (`get_layer_mask_schedule`): per layer, the mean token entropy of the
   previous step's head-averaged attention; min-max normalised over the layers, reuse = 1 - normalised
   entropy, and each rise over the layer below is damped to 0.55 of itself.
4. Reuse (their `LlamaModel.forward` and `DynamicCache.update`): at layers 2, 6, 9 and 11 the first
   max(1, int(reuse[l] |R|)) tokens of R leave the hidden states (more only where that count grows), so
   from there on they are neither queries nor recomputed; their keys and values at that layer and above
   stay those of the previous step, which the recomputed tokens attend to as usual. Everything else,
   BOS, the other visual tokens and the text, is recomputed; the first step of an episode computes all.

Settings keep those defaults; counts and layers given for openvla-7b (256 patches, 32 layers) scale
with the model's patch count and depth (so `openvla-7b` gets exactly the authors' values). Where this
implementation differs, and why (also in docs/benchmarks.md, "VLA-Cache"):

- It is our own prefill loop over the decoder layers (the Llama layer's modules, so pruned per-layer
  widths and quantized linears run unchanged) rather than a patched transformers; attention is the
  eager softmax, as in the authors' runs (they request attention maps, which forces eager attention),
  and only the statistics (per-layer entropy, text-to-visual attention) are kept, not the maps.
- Batches: one cache per batch row (environment). Each row selects its own tokens, but a batch
  reuses at each layer as many tokens as the row that reuses fewest (the others recompute the
  rest), so the batch stays one tensor; the authors run batch 1.
- Text queries are all the prompt's text tokens (the authors' code takes 35 positions after the
  patches); padding never counts as a query.
- A row's cache is dropped at `reset()`, when its instruction changes, and when the batch size or
  frame size changes; the action tokens are decoded exactly as `decode="dynamic"` decodes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from .processing import _as_image_batch

# The authors' settings for openvla-7b: 256 visual tokens (16 x 16 patches of 14 px at 224 px), 32 layers.
AUTHORS_PATCHES = 256
AUTHORS_LAYERS = 32
AUTHORS_STATIC_TOP_K = 130  # openvla_utils.get_vla_action: find_static_patches(..., top_k=130)
AUTHORS_TASK_TOP_K = 120  # vla_cache_utils.task_relevant_selection(top_k=120)
AUTHORS_ATTENTION_LAYER = 15  # vla_cache_utils.token_attention_merge(layer_id=15)
AUTHORS_REUSE_LAYERS = (2, 6, 9, 11)  # LlamaModel.pruning_loc in the authors' transformers fork


def _scaled(value: int, size: int, authors_size: int) -> int:
    """`value` of the authors' `authors_size` in proportion to `size`, rounded half up."""
    return int(value * size / authors_size + 0.5)


def _check_int(name: str, value: Any, low: int = 0) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


@dataclass
class VLACacheConfig:
    """Settings of `VLACachePolicy`; None means the authors' value scaled to the model (see the module doc).

    - `enabled`: False runs the same cached prefill but reuses nothing (every step computes all tokens).
    - `static_top_k`: at most this many static patches per step (authors: 130 of 256 patches).
    - `similarity_threshold`: a patch is static when its cosine similarity with the previous frame's
      patch is at least this, in [0, 1] (authors: 0.996).
    - `task_top_k`: this many patches with the highest text-to-visual attention are always recomputed
      (authors: 120 of 256).
    - `attention_layer`: the decoder layer whose attention ranks task relevance (authors: 15 of 32).
    - `reuse_layers`: the layers at which reused tokens leave the computation (authors: 2, 6, 9, 11 of 32).
    - `reuse_fraction`: None for the paper's layer-adaptive fraction from attention entropy, or a fixed
      fraction in [0, 1] of the reusable set at every reuse layer (then without the authors' one-token minimum).
    - `growth_factor`: how much of a rise in the adaptive fraction over the layer below is kept, in [0, 1]
      (authors: 0.55; 1.0 keeps the raw entropy schedule).
    """

    enabled: bool = True
    static_top_k: int | None = None
    similarity_threshold: float = 0.996
    task_top_k: int | None = None
    attention_layer: int | None = None
    reuse_layers: tuple[int, ...] | None = None
    reuse_fraction: float | None = None
    growth_factor: float = 0.55

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be True or False, got {self.enabled!r}")
        for name in ("static_top_k", "task_top_k", "attention_layer"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name))
        _check_fraction("similarity_threshold", self.similarity_threshold)
        _check_fraction("growth_factor", self.growth_factor)
        if self.reuse_fraction is not None:
            _check_fraction("reuse_fraction", self.reuse_fraction)
        if self.reuse_layers is not None:
            if isinstance(self.reuse_layers, (str, bytes)) or not isinstance(self.reuse_layers, Sequence):
                raise ValueError(f"reuse_layers must be a sequence of layer indices, got {self.reuse_layers!r}")
            for layer in self.reuse_layers:
                _check_int("reuse_layers entries", layer)
            self.reuse_layers = tuple(sorted({int(layer) for layer in self.reuse_layers}))

    def resolved(self, n_patches: int, n_layers: int) -> VLACacheConfig:
        """A copy with every None replaced by the authors' value scaled to `n_patches` and `n_layers`;
        layer indices outside the model raise ValueError."""
        reuse_layers = self.reuse_layers
        if reuse_layers is None:
            reuse_layers = tuple(sorted({max(1, _scaled(layer, n_layers, AUTHORS_LAYERS))
                                         for layer in AUTHORS_REUSE_LAYERS}))
        attention_layer = self.attention_layer
        if attention_layer is None:
            attention_layer = min(n_layers - 1, _scaled(AUTHORS_ATTENTION_LAYER, n_layers, AUTHORS_LAYERS))
        for name, layers in (("reuse_layers", reuse_layers), ("attention_layer", (attention_layer,))):
            if any(layer >= n_layers for layer in layers):
                raise ValueError(f"{name}={layers if name == 'reuse_layers' else attention_layer} is outside the "
                                 f"model's decoder layers 0..{n_layers - 1}")
        return dataclasses.replace(
            self, reuse_layers=reuse_layers, attention_layer=attention_layer,
            static_top_k=min(n_patches, self.static_top_k if self.static_top_k is not None
                             else _scaled(AUTHORS_STATIC_TOP_K, n_patches, AUTHORS_PATCHES)),
            task_top_k=min(n_patches, self.task_top_k if self.task_top_k is not None
                           else _scaled(AUTHORS_TASK_TOP_K, n_patches, AUTHORS_PATCHES)))


def layer_reuse_schedule(entropy: torch.Tensor, growth_factor: float = 0.55) -> torch.Tensor:
    """Reuse fraction per layer `[B, layers]` from the mean attention entropy per layer `[B, layers]`.

    Min-max normalised over the layers, reuse = 1 - normalised entropy (low entropy: attention is
    concentrated, so more tokens can be reused); a rise over the layer below keeps `growth_factor` of
    itself. As `get_layer_mask_schedule` in the authors' `vla_cache_utils.py`.
    """
    low, high = entropy.min(dim=1, keepdim=True).values, entropy.max(dim=1, keepdim=True).values
    reuse = 1.0 - (entropy - low) / (high - low + 1e-10)
    smoothed = [reuse[:, 0]]
    for layer in range(1, reuse.shape[1]):
        delta = reuse[:, layer] - smoothed[-1]
        smoothed.append(torch.where(delta > 0, smoothed[-1] + delta * growth_factor, reuse[:, layer]))
    return torch.stack(smoothed, dim=1)


def patch_similarity(frames: torch.Tensor, previous: torch.Tensor, patch: int) -> torch.Tensor:
    """Cosine similarity `[B, patches]` (row-major patch order, as the ViT's tokens) of each `patch` x `patch`
    block of float frames `[B, 3, S, S]` with the same block of `previous`."""

    def blocks(x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return x.unfold(2, patch, patch).unfold(3, patch, patch).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, 3 * patch**2)

    a, b = blocks(frames.float()), blocks(previous.float())
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-8)


@dataclass
class _EpisodeCache:
    """What one step leaves for the next, one row per environment of the batch."""

    frames: torch.Tensor  # [B, 3, S, S] the frames as the model saw them (the processor's resize), in [0, 1]
    keys: list[torch.Tensor]  # per layer [B, kv_heads, patches, head_dim]: the visual tokens' keys
    values: list[torch.Tensor]
    relevance: torch.Tensor  # [B, patches] text-to-visual attention at `attention_layer`
    entropy: torch.Tensor  # [B, layers] mean attention entropy per layer
    instructions: list[str]
    valid: list[bool]  # False: the row starts an episode (nothing to reuse)


@dataclass
class _Stats:
    steps: int = 0
    rows: int = 0
    rows_with_cache: int = 0
    reused: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per layer, summed over rows and steps


class VLACachePolicy:
    """`model` with VLA-Cache: a stateful policy, one cache per environment (batch row), reset per episode.

    `predict_action(images, instructions, ...)` takes and returns what the model's does; call `reset()`
    when every environment starts an episode (``evaluate()`` does) or `reset(env_ids)` for some; a row
    whose instruction changes starts afresh by itself. `config` (or keyword overrides of it) sets what is
    reused; bad settings raise ValueError before any work. After each call `last_step` says how many
    visual tokens each layer reused; `describe()` summarises the settings and reuse since `clear_stats()`.
    Works for dense, pruned (per-layer widths) and quantized models of the Llama LM, on CPU and GPU.

        policy = VLACachePolicy(load_vla("tiny-maniskill"))
        evaluate(policy, tasks="ind")
    """

    def __init__(self, model: nn.Module, config: VLACacheConfig | None = None, **overrides: Any) -> None:
        config = dataclasses.replace(config or VLACacheConfig(), **overrides)
        if not callable(getattr(model, "generate_action_indices", None)) or getattr(model, "processor", None) is None:
            raise ValueError("model must be an OpenVLAForActionPrediction with a processor (load it with load_vla)")
        backbone = model.language_model.model
        for i, layer in enumerate(backbone.layers):
            attn = getattr(layer, "self_attn", None)
            if not all(hasattr(layer, name) for name in ("input_layernorm", "post_attention_layernorm", "mlp")) or \
                    not all(hasattr(attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim")):
                raise ValueError(f"VLA-Cache needs a Llama-style decoder; layer {i} is a {type(layer).__name__}")
        self.model = model
        self.image_size = int(model.processor.image_sizes[0])
        patch = model.vision_backbone.featurizer.patch_embed.patch_size
        self.patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        if self.image_size % self.patch:
            raise ValueError(f"image size {self.image_size} is not a multiple of the ViT patch {self.patch}")
        self.n_patches = (self.image_size // self.patch) ** 2
        self.n_layers = len(backbone.layers)
        self.config = config
        self.settings = config.resolved(self.n_patches, self.n_layers)
        self.last_step: dict[str, Any] = {}
        self._cache: _EpisodeCache | None = None
        self.clear_stats()

    # ---- episodes -----------------------------------------------------------------------------------------
    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        """Forget the cache of every environment (None) or of the batch rows `env_ids`."""
        if env_ids is None or self._cache is None:
            self._cache = None
            return
        for env in env_ids:
            if isinstance(env, bool) or not isinstance(env, (int, np.integer)) or not 0 <= env < len(self._cache.valid):
                raise ValueError(f"env_ids must be batch rows in 0..{len(self._cache.valid) - 1}, got {env!r}")
            self._cache.valid[int(env)] = False

    def clear_stats(self) -> None:
        self._stats = _Stats(reused=np.zeros(self.n_layers))

    def describe(self) -> dict[str, Any]:
        """Settings (as resolved for this model) and reuse since `clear_stats()`: visual tokens reused per
        layer per row-step on average, and the fraction of all visual-token layer computations reused."""
        s = self._stats
        per_layer = (s.reused / s.rows).tolist() if s.rows else [0.0] * self.n_layers
        return {"method": "vla-cache", "settings": dataclasses.asdict(self.settings), "visual_tokens": self.n_patches,
                "steps": s.steps, "rows": s.rows, "rows_with_cache": s.rows_with_cache,
                "mean_reused_tokens_per_layer": per_layer,
                "reused_fraction": float(s.reused.sum() / (s.rows * self.n_patches * self.n_layers)) if s.rows else 0.0}

    # ---- acting -------------------------------------------------------------------------------------------
    def predict_action(self, images: np.ndarray | torch.Tensor | Sequence, instructions: Sequence[str] | str,
                       unnorm_key: str | None = None, temperature: float = 0.0,
                       generator: torch.Generator | None = None, decode: str = "dynamic") -> np.ndarray:
        """RGB uint8 images `[B, H, W, 3]` + one instruction each -> actions `[B, 7]`, as the model's
        `predict_action`; row b continues environment b's episode. Only `decode="dynamic"` is supported."""
        if decode != "dynamic":
            raise ValueError(f"decode={decode!r}: VLACachePolicy decodes with decode='dynamic' only")
        texts = [instructions] if isinstance(instructions, str) else list(instructions)
        frames = self.model.processor.frames(_as_image_batch(images).to(self.model.device))  # as the model sees them

        def prefill(embeds: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor):
            return self._prefill(embeds, mask, position_ids, frames, texts)

        return self.model.predict_action(images, instructions, unnorm_key=unnorm_key, temperature=temperature,
                                         generator=generator, decode=decode, prefill=prefill)

    __call__ = predict_action

    # ---- which tokens are reused ------------------------------------------------------------------------------
    def _valid_rows(self, frames: torch.Tensor, instructions: list[str]) -> list[bool]:
        """Rows that continue an episode with a usable cache (the cache is dropped when the batch changes)."""
        cache = self._cache
        if cache is None or cache.frames.shape != frames.shape or cache.frames.device != frames.device:
            self._cache = None
            return [False] * frames.shape[0]
        return [ok and old == new for ok, old, new in zip(cache.valid, cache.instructions, instructions, strict=True)]

    def _plan(self, frames: torch.Tensor, valid: list[bool]) -> dict[int, torch.Tensor]:
        """{layer: reused columns [B, count]} for each reuse layer, counts cumulative (layer l's set contains
        the sets of the layers below); empty when nothing is reused."""
        s, cache = self.settings, self._cache
        if not s.enabled or cache is None or not any(valid):
            return {}
        rows = frames.shape[0]
        similarity = patch_similarity(frames, cache.frames, self.patch)  # [B, N]
        order = similarity.argsort(dim=1, descending=True, stable=True)
        ranked_static = similarity.gather(1, order) >= s.similarity_threshold
        ranked_static[:, s.static_top_k:] = False
        static = torch.zeros_like(ranked_static).scatter_(1, order, ranked_static)
        relevant = torch.zeros_like(static)
        relevant.scatter_(1, cache.relevance.argsort(dim=1, descending=True, stable=True)[:, :s.task_top_k], True)
        reusable = static & ~relevant & torch.tensor(valid, device=static.device)[:, None]
        in_order = torch.argsort((~reusable).to(torch.int8), dim=1, stable=True)  # reusable patches first, by position
        sizes = reusable.sum(dim=1).cpu().double()[:, None]  # |R| per row
        layers = list(s.reuse_layers)
        if s.reuse_fraction is None:  # the authors' max(1, int(reuse[l] * |R|))
            fractions = layer_reuse_schedule(cache.entropy, s.growth_factor)[:, layers].cpu().double()
            raw = torch.where(sizes > 0, (fractions * sizes).floor().clamp(min=1.0), 0.0)
        else:
            raw = (s.reuse_fraction * sizes).floor().expand(rows, len(layers))
        counts = torch.minimum(raw.cummax(dim=1).values, sizes)  # a layer reuses at least what the one below did
        batch_counts = counts.min(dim=0).values.long().tolist()  # one tensor per batch: the row reusing fewest
        return {layer: 1 + in_order[:, :count] for layer, count in zip(layers, batch_counts, strict=True) if count}

    # ---- the prompt pass --------------------------------------------------------------------------------------
    def _prefill(self, embeds: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, frames: torch.Tensor,
                 instructions: list[str]) -> tuple[torch.Tensor, DynamicCache]:
        """The prompt pass with reuse: (last position's final hidden state [B, hidden], the prompt's KV cache)."""
        backbone = self.model.language_model.model
        rows, length = mask.shape
        n = self.n_patches
        valid = self._valid_rows(frames, instructions)
        plan = self._plan(frames, valid)
        cache = self._cache
        cos, sin = backbone.rotary_emb(embeds, position_ids)
        computed = _Computed.of(torch.arange(length, device=embeds.device).expand(rows, length), mask.bool(), cos,
                                sin, n)
        hidden = embeds
        keys, values = [], []
        entropy = torch.zeros(rows, self.n_layers, device=embeds.device)
        relevance = None
        reused_per_layer, reused = [], 0
        for i, layer in enumerate(backbone.layers):
            if i in plan:  # these tokens leave the computation; their keys and values come from the last step
                leaving = torch.zeros(rows, length, dtype=torch.bool, device=embeds.device).scatter_(1, plan[i], True)
                keep = ~leaving.gather(1, computed.columns)
                reused = plan[i].shape[1]
                computed = _Computed.of(computed.columns[keep].view(rows, length - reused), mask.bool(), cos, sin, n)
                hidden = hidden[keep].view(rows, length - reused, -1)
            past = (cache.keys[i], cache.values[i]) if reused else None
            hidden, layer_keys, layer_values, probs = _decoder_layer(layer, hidden, computed, past)
            keys.append(layer_keys)
            values.append(layer_values)
            reused_per_layer.append(reused)
            is_relevance_layer = i == self.settings.attention_layer
            entropy[:, i], layer_relevance = _attention_stats(probs, computed, n, is_relevance_layer)
            if is_relevance_layer:
                relevance = layer_relevance
        last = backbone.norm(hidden[:, -1])  # the last column (the prompt's final token) is always computed
        if self.settings.enabled:
            self._cache = _EpisodeCache(frames=frames, keys=[k[:, :, 1:1 + n] for k in keys],
                                        values=[v[:, :, 1:1 + n] for v in values], relevance=relevance,
                                        entropy=entropy, instructions=list(instructions), valid=[True] * rows)
        self.last_step = {"rows": rows, "rows_with_cache": sum(valid), "visual_tokens": n,
                          "reused_tokens_per_layer": reused_per_layer}
        s = self._stats
        s.steps, s.rows, s.rows_with_cache = s.steps + 1, s.rows + rows, s.rows_with_cache + sum(valid)
        s.reused = s.reused + rows * np.asarray(reused_per_layer, dtype=float)
        return last, DynamicCache(ddp_cache_data=list(zip(keys, values, strict=True)), config=backbone.config)


@dataclass
class _Computed:
    """The computed tokens of a prompt pass (they change only at reuse layers) and what follows from them."""

    columns: torch.Tensor  # [B, n] their columns in the prompt, ascending
    cos: torch.Tensor  # [B, n, head_dim] their rotary embeddings
    sin: torch.Tensor
    allowed: torch.Tensor  # [B, n, L] which columns each may attend to: causal, no padding
    queries: torch.Tensor  # [B, n] 1.0 for real tokens (not padding)
    text: torch.Tensor  # [B, n] 1.0 for the prompt's text tokens (after BOS and the patches)

    @classmethod
    def of(cls, columns: torch.Tensor, real: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           patches: int) -> _Computed:
        at = columns[:, :, None].expand(*columns.shape, cos.shape[-1])
        allowed = (torch.arange(real.shape[1], device=columns.device) <= columns[:, :, None]) & real[:, None, :]
        queries = real.gather(1, columns).float()
        return cls(columns, cos.gather(1, at), sin.gather(1, at), allowed, queries, queries * (columns > patches))


def _decoder_layer(layer: nn.Module, hidden: torch.Tensor, computed: _Computed,
                   past: tuple[torch.Tensor, torch.Tensor] | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Llama decoder layer over the computed tokens `hidden [B, n, D]` of a prompt of L columns. Keys and
    values of the other columns (visual tokens reused from the last step) come from `past`
    (`[B, kv_heads, patches, head_dim]` each, for columns 1..patches).

    Returns (hidden, keys and values of all columns `[B, kv_heads, L, head_dim]`, attention probabilities
    `[B, heads, n, L]` in float32), computed as transformers' eager Llama attention computes them."""
    rows, n, _ = hidden.shape
    length = computed.allowed.shape[-1]
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    shape = (rows, n, -1, attn.head_dim)
    query = attn.q_proj(x).view(shape).transpose(1, 2)
    key = attn.k_proj(x).view(shape).transpose(1, 2)
    value = attn.v_proj(x).view(shape).transpose(1, 2)
    query, key = apply_rotary_pos_emb(query, key, computed.cos, computed.sin)
    if past is None:  # every column computed
        keys, values = key, value
    else:
        patches = past[0].shape[2]
        keys = key.new_empty(*key.shape[:2], length, key.shape[-1])
        values = value.new_empty(*value.shape[:2], length, value.shape[-1])
        keys[:, :, 1:1 + patches], values[:, :, 1:1 + patches] = past
        where = computed.columns[:, None, :, None].expand_as(key)
        keys.scatter_(2, where, key)
        values.scatter_(2, where, value)
    groups = query.shape[1] // keys.shape[1]
    scores = torch.matmul(query, repeat_kv(keys, groups).transpose(2, 3)) * attn.scaling
    scores = scores.masked_fill(~computed.allowed[:, None], torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    out = torch.matmul(probs.to(value.dtype), repeat_kv(values, groups))
    hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(rows, n, -1))
    hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return hidden, keys, values, probs


def _attention_stats(probs: torch.Tensor, computed: _Computed, patches: int,
                     relevance: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean token entropy of the head-averaged attention over real queries [B], and when `relevance` the
    mean attention of the text queries to each visual token [B, patches]), as the authors compute them."""
    attention = probs.mean(dim=1)  # [B, n, L]
    normalised = attention / (attention.sum(dim=-1, keepdim=True) + 1e-10)
    token_entropy = -(normalised * torch.log(normalised + 1e-10)).sum(dim=-1)  # [B, n]
    entropy = (token_entropy * computed.queries).sum(dim=1) / computed.queries.sum(dim=1)
    if not relevance:
        return entropy, None
    to_patches = (attention[:, :, 1:1 + patches] * computed.text[:, :, None]).sum(dim=1)
    return entropy, to_patches / computed.text.sum(dim=1, keepdim=True).clamp(min=1.0)
