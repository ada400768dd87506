"""`OpenVLAForActionPrediction`: the OpenVLA architecture, loading openvla-7b's keys as they are.

Module names follow the public checkpoint: `vision_backbone.featurizer` (+ `fused_featurizer`),
`projector.fc1/fc2/fc3`, `language_model` (a Hugging Face causal LM). Unlike upstream it needs no
`trust_remote_code`, decodes batches (mid-padding + KV cache), computes logits only for the
action-token rows when decoding, and exposes the per-token log-probs and critic features PPO needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerScale
from torch import nn
from transformers import AutoModelForCausalLM, Cache, PreTrainedModel, StaticCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast

from .action_tokenizer import ACTION_DIM, unnormalize_actions
from .config import OpenVLAConfig
from .processing import _as_image_batch
from .widths import current_layer_widths, resize_decoder_layers

# How `generate_action_indices` decodes (see its docstring; docs/benchmarks.md, "Decode path", has
# the latencies: on a CPU "static" alone is no faster than "dynamic", so "dynamic" stays the default).
DECODE_PATHS = ("dynamic", "static", "compiled", "frozen")
# decode="frozen" on a CPU: inductor treats the weights as constants (freezing), folds them into the graph and
# runs the linears on MKL's pre-packed weights. Its C++ GEMM templates (max-autotune) read the weights of a
# batch-1 matrix-vector product 2-3x faster still, but gave wrong tokens from the second decode step on in this
# model's step with torch 2.14.1 (a 32-layer stack of plain linears was right): not used (docs/benchmarks.md).
FROZEN_INDUCTOR_OPTIONS = {"freezing": True}
# `decode="compiled"` / "frozen" round the static cache up to a multiple of this many slots, so prompts of
# nearby lengths share one compiled graph (the extra slots are masked out).
COMPILED_CACHE_MULTIPLE = 32
# One step: (chosen action indices [B]) -> action logits [B, n_bins] after feeding them back.
DecodeStep = Callable[[torch.Tensor], torch.Tensor]
# A replacement of decode="dynamic"'s prompt pass: (embeds, mask, position_ids) -> (last position's final
# hidden state [B, hidden], the prompt's KV cache); VLA-Cache's cached prefill is one (vla_cache.py).
Prefill = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, Cache]]


def check_decode(decode: str) -> None:
    """Raise a ValueError naming `decode` unless it is one of `DECODE_PATHS`."""
    if decode not in DECODE_PATHS:
        raise ValueError(f"decode={decode!r} is unknown; allowed: {DECODE_PATHS}")


def _under_inductor_config(compiled: Callable, options: dict) -> Callable:
    """`compiled` called with inductor's config patched by `options` (compilation happens at a call; passing
    `freezing` through `torch.compile(options=)` does not reach inductor's freezing pass, the patch does)."""

    def run(*args: Any) -> Any:
        with torch._inductor.config.patch(options):
            return compiled(*args)

    return run


def _unmark_static_addresses(cache: StaticCache) -> None:
    """Undo `torch._dynamo.mark_static_address` on `cache`'s tensors (StaticCache marks them for CUDA graphs):
    inductor's freezing folds marked tensors into the graph as constants, so a frozen decode step would
    read the keys and values as they were when it compiled instead of the cache's current ones."""
    for layer in cache.layers:
        for tensor in vars(layer).values():
            if isinstance(tensor, torch.Tensor) and hasattr(tensor, "_dynamo_static_input_type"):
                del tensor._dynamo_static_input_type


def action_predictor(policy, decode: str | None = None) -> Callable:
    """`policy`'s ``predict_action`` (or `policy` itself, a callable) with `decode` bound when given.

    One place for the rule the rollout loops (evaluation, DAgger) share: a decode path needs an
    :class:`OpenVLAForActionPrediction`; any other policy is used as it is. Raises ValueError naming
    `decode` or `policy` before any rollout starts."""
    if decode is not None:
        check_decode(decode)
    predict = getattr(policy, "predict_action", policy)
    if not callable(predict):
        raise ValueError("policy must have predict_action(images, instructions, unnorm_key) or be callable")
    if decode is None:
        return predict
    if not isinstance(policy, OpenVLAForActionPrediction):
        raise ValueError(f"decode={decode!r} needs an OpenVLAForActionPrediction policy, got {type(policy).__name__}")
    return partial(policy.predict_action, decode=decode)


def episode_reset(policy) -> Callable[[], None] | None:
    """`policy`'s ``reset()`` when it has one (a stateful policy, such as ``VLACachePolicy`` or
    ``GripperHysteresis``, forgets the last episodes), else None: the rollout loops call it at every
    episode start."""
    reset = getattr(policy, "reset", None)
    return reset if callable(reset) else None


class ScaleFactorLayerScale(nn.Module):
    """timm's LayerScale with its parameter named `scale_factor`, as in OpenVLA checkpoints.

    OpenVLA renamed `gamma` because old transformers rewrote `gamma` keys to `weight` on load.
    """

    def __init__(self, gamma: torch.Tensor) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(gamma.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


def _rename_layer_scale(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, LayerScale):
            setattr(module, name, ScaleFactorLayerScale(child.gamma))
        else:
            _rename_layer_scale(child)


def build_featurizer(model_id: str, image_size: int, act_layer: str | None, kwargs: dict) -> nn.Module:
    """A timm ViT that returns the patch tokens of its second-to-last block (OpenVLA's features)."""
    extra = dict(kwargs)
    if act_layer is not None:
        extra["act_layer"] = act_layer
    vit = timm.create_model(model_id, pretrained=False, num_classes=0, img_size=image_size, **extra)
    _rename_layer_scale(vit)
    vit.forward = partial(_second_to_last_patch_tokens, vit)
    return vit


def _second_to_last_patch_tokens(vit: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    (features,) = vit.get_intermediate_layers(pixel_values, n={len(vit.blocks) - 2})
    return features


class OpenVLAVisionBackbone(nn.Module):
    """One timm ViT, or two fused on the channel axis of `pixel_values` (DINOv2 + SigLIP)."""

    def __init__(self, config: OpenVLAConfig) -> None:
        super().__init__()
        specs = list(zip(config.timm_model_ids, config.image_sizes, config.timm_override_act_layers,
                         config.timm_kwargs))
        self.use_fused_vision_backbone = config.use_fused_vision_backbone
        self.featurizer = build_featurizer(*specs[0])
        self.embed_dim = self.featurizer.embed_dim
        if self.use_fused_vision_backbone:
            self.fused_featurizer = build_featurizer(*specs[1])
            self.embed_dim += self.fused_featurizer.embed_dim

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not self.use_fused_vision_backbone:
            return self.featurizer(pixel_values)
        image, image_fused = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat([self.featurizer(image), self.fused_featurizer(image_fused)], dim=2)


class OpenVLAProjector(nn.Module):
    """GELU MLP from vision features to the LM width (`fc1/fc2/fc3` when fused, `fc1/fc2` otherwise)."""

    def __init__(self, use_fused_vision_backbone: bool, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.use_fused_vision_backbone = use_fused_vision_backbone
        if use_fused_vision_backbone:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim, bias=True)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim, bias=True)
            self.fc3 = nn.Linear(llm_dim, llm_dim, bias=True)
            self.act_fn1, self.act_fn2 = nn.GELU(), nn.GELU()
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim, bias=True)
            self.fc2 = nn.Linear(llm_dim, llm_dim, bias=True)
            self.act_fn1 = nn.GELU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.act_fn1(self.fc1(features))
        if not self.use_fused_vision_backbone:
            return self.fc2(x)
        return self.fc3(self.act_fn2(self.fc2(x)))


@dataclass
class ActionOutput:
    """Action-token outputs of a batch whose sequences end with `ACTION_DIM` action tokens."""

    action_logits: torch.Tensor  # [B, 7, n_bins]: logits over the action vocabulary only
    critic_features: torch.Tensor  # [B, hidden]: last-layer state at the position predicting action 1
    vocab_logits: torch.Tensor | None = None  # [B, 7, vocab]: full-vocabulary logits (for SFT's loss)


class OpenVLAPreTrainedModel(PreTrainedModel):
    config_class = OpenVLAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["OpenVLAProjector"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.text_config.initializer_range
        if isinstance(module, nn.Linear) and module.weight.device.type != "meta":
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module.weight.device.type != "meta":
            nn.init.normal_(module.weight, mean=0.0, std=std)


class OpenVLAForActionPrediction(OpenVLAPreTrainedModel):
    """Vision backbone(s) + projector + causal LM that emits 7 action tokens per image."""

    def __init__(self, config: OpenVLAConfig) -> None:
        super().__init__(config)
        self.vision_backbone = OpenVLAVisionBackbone(config)
        self.projector = OpenVLAProjector(
            config.use_fused_vision_backbone, self.vision_backbone.embed_dim, config.text_config.hidden_size
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        resize_decoder_layers(self.language_model, config.llm_layer_widths)
        self.processor = None  # an OpenVLAProcessor, attached by load_vla / from_pretrained
        # `_compiled`'s graphs per (part, device type, decode), and the weights' version "frozen" compiled in
        self._compiled_steps: dict[tuple, Callable[..., torch.Tensor]] = {}
        self._frozen_version: int | None = None
        self._held_caches: dict[tuple, StaticCache] = {}  # decode="compiled" / "frozen", per batch and cache shape
        self.post_init()

    # ---- embeddings ----------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def _visual_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The projected patches `[B, n_patches, hidden]` of `pixel_values`."""
        # the first float weight of the vision tower (its patch embedding; quantized linears hold integers)
        dtype = next(p.dtype for p in self.vision_backbone.parameters() if p.is_floating_point())
        return self.projector(self.vision_backbone(pixel_values.to(dtype)))

    def _multimodal_inputs(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None, visual_tokens: Callable | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Insert projected patches after BOS (from `visual_tokens`, default `_visual_tokens`); positions
        follow the attention mask."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        patches = (visual_tokens or self._visual_tokens)(pixel_values)
        text = self.get_input_embeddings()(input_ids)
        embeds = torch.cat([text[:, :1], patches.to(text.dtype), text[:, 1:]], dim=1)
        patch_mask = attention_mask.new_ones(patches.shape[:2])
        mask = torch.cat([attention_mask[:, :1], patch_mask, attention_mask[:, 1:]], dim=1)
        position_ids = (mask.cumsum(dim=1) - 1).clamp_(min=0)
        return embeds, mask, position_ids

    # ---- training forward ------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> CausalLMOutputWithPast:
        """Upstream-compatible forward: full logits; `labels` (-100 = ignore) give the next-token loss."""
        embeds, mask, position_ids = self._multimodal_inputs(pixel_values, input_ids, attention_mask)
        out = self.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, **kwargs)
        loss = None
        if labels is not None:
            n_patches = embeds.shape[1] - input_ids.shape[1]
            ignore = labels.new_full((labels.shape[0], n_patches), -100)
            full_labels = torch.cat([labels[:, :1], ignore, labels[:, 1:]], dim=1)
            loss = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), full_labels[:, 1:].flatten())
        return CausalLMOutputWithPast(loss=loss, logits=out.logits)

    def action_forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor | None = None, full_vocab: bool = False) -> ActionOutput:
        """Outputs at the 7 positions that predict the trailing action tokens of `input_ids`."""
        embeds, mask, position_ids = self._multimodal_inputs(pixel_values, input_ids, attention_mask)
        hidden = self.language_model.model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        predicting = hidden[:, -ACTION_DIM - 1:-1]
        vocab_logits = self.language_model.lm_head(predicting) if full_vocab else None
        return ActionOutput(self._action_logits(predicting), hidden[:, -ACTION_DIM - 1], vocab_logits)

    def action_loss(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy of the 7 trailing action tokens over the full vocabulary (OpenVLA's SFT loss)."""
        out = self.action_forward(pixel_values, input_ids, attention_mask, full_vocab=True)
        targets = input_ids[:, -ACTION_DIM:]
        return F.cross_entropy(out.vocab_logits.flatten(0, 1).float(), targets.flatten())

    # ---- action vocabulary -----------------------------------------------------------------------------
    @property
    def action_token_ids(self) -> range:
        return self.config.action_token_ids

    def _action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the action-token rows of the output head only."""
        ids = self.action_token_ids
        head = self.language_model.lm_head
        if type(head) is nn.Linear:
            bias = head.bias[ids.start:ids.stop] if head.bias is not None else None
            return F.linear(hidden, head.weight[ids.start:ids.stop], bias)
        return head(hidden)[..., ids.start:ids.stop]  # quantized heads: compute all rows, then slice

    def action_token_log_probs(self, action_logits: torch.Tensor, action_indices: torch.Tensor,
                               temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample log-prob (sum over 7 tokens) and entropy (mean over 7) in the action vocabulary."""
        log_probs = torch.log_softmax(action_logits.float() / temperature, dim=-1)
        chosen = log_probs.gather(-1, action_indices.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return chosen.sum(-1), entropy.mean(-1)

    # ---- decoding --------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_action_indices(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                                attention_mask: torch.Tensor | None = None, temperature: float = 0.0,
                                generator: torch.Generator | None = None,
                                decode: str = "dynamic", prefill: Prefill | None = None) -> dict[str, torch.Tensor]:
        """Decode 7 action tokens for a mid-padded batch with a KV cache.

        Returns `action_indices [B, 7]` (index into the action vocabulary), their `log_probs [B]` under
        the sampling temperature (1.0 when greedy), and `critic_features [B, hidden]`.

        `decode` chooses the loop, all three giving the same actions: "dynamic" (default) grows a
        `DynamicCache` and the mask by one column per step; "static" fills a KV cache and an attention
        mask allocated once for the prompt + the fed-back tokens (no concatenation, no per-step mask);
        "compiled" runs the static loop's decode step through `torch.compile` (CUDA graphs on a GPU):
        the first call of each batch size and prompt-length bucket compiles, and its caches stay on the
        model for reuse. "frozen" (CPU) compiles the vision tower, the prompt pass and the step with
        the weights frozen in as constants (inductor's freezing: folded, pre-packed linears), at tens
        of seconds of compilation per shape; for deployment: once a weight changes in place (an
        optimizer step, `load_state_dict`) it raises ValueError. On a GPU it is "compiled".
        `prefill` (decode="dynamic" only) replaces the prompt pass, see `Prefill`.
        """
        check_decode(decode)
        if prefill is not None and decode != "dynamic":
            raise ValueError(f"prefill= needs decode='dynamic', got decode={decode!r}")
        if decode == "frozen" and pixel_values.device.type == "cpu":
            self._check_frozen_weights()
        visual = self._compiled("visual", self._visual_tokens, pixel_values.device, decode)
        embeds, mask, position_ids = self._multimodal_inputs(pixel_values, input_ids, attention_mask, visual)
        if decode == "dynamic":
            critic_features, logits, step = self._dynamic_decoder(embeds, mask, position_ids, prefill)
        else:
            critic_features, logits, step = self._static_decoder(embeds, mask, position_ids, decode)
        indices, logits_seen = [], []
        for i in range(ACTION_DIM):
            if i:
                logits = step(indices[-1])
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                index = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                index = logits.argmax(dim=-1)
            indices.append(index)
            logits_seen.append(logits)
        action_indices = torch.stack(indices, dim=1)
        log_probs, _ = self.action_token_log_probs(
            torch.stack(logits_seen, dim=1), action_indices, temperature if temperature > 0 else 1.0
        )
        return {"action_indices": action_indices, "log_probs": log_probs, "critic_features": critic_features}

    def _token_embeds(self, action_indices: torch.Tensor) -> torch.Tensor:
        """Input embeddings `[B, 1, hidden]` of one action token per row."""
        return self.get_input_embeddings()(action_indices + self.action_token_ids.start).unsqueeze(1)

    def _dynamic_decoder(self, embeds: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor,
                         prefill: Prefill | None = None) -> tuple[torch.Tensor, torch.Tensor, DecodeStep]:
        """Prefill with a `DynamicCache` (or `prefill`'s); each step concatenates a mask column and the new
        keys/values."""
        backbone = self.language_model.model
        if prefill is None:
            out = backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=True)
            last, cache = out.last_hidden_state[:, -1], out.cache
        else:
            last, cache = prefill(embeds, mask, position_ids)
        positions = position_ids[:, -1:]

        def step(index: torch.Tensor) -> torch.Tensor:
            nonlocal mask, positions
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            positions = positions + 1
            hidden = backbone(inputs_embeds=self._token_embeds(index), attention_mask=mask, position_ids=positions,
                              cache=cache, use_cache=True).last_hidden_state
            return self._action_logits(hidden[:, -1]).float()

        return last, self._action_logits(last).float(), step

    def _static_decoder(self, embeds: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor,
                        decode: str) -> tuple[torch.Tensor, torch.Tensor, DecodeStep]:
        """Prefill into a `StaticCache`; each step writes one cache slot and reads one row of a mask built once.

        transformers' `StaticCache` serves pruned models as it is: each layer allocates its keys/values
        from the shape of its first keys (`StaticLayer.lazy_initialization`), so per-layer KV heads need
        no sizes from the config. Slots are columns shared by the batch: mid-padded rows all end at the
        prompt's last column, and positions still come from each row's mask.
        """
        backbone = self.language_model.model
        if backbone.config._attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"decode={decode!r} needs the LM's attn_implementation 'sdpa' or 'eager', "
                             f"got {backbone.config._attn_implementation!r}; use decode='dynamic'")
        compiled = decode in ("compiled", "frozen")
        batch, length = mask.shape
        slots = length + ACTION_DIM - 1  # the prompt + 6 fed-back tokens (the 7th is never fed back)
        if compiled:
            slots = -(-slots // COMPILED_CACHE_MULTIPLE) * COMPILED_CACHE_MULTIPLE
        cache = self._held_cache(batch, slots, embeds) if compiled else StaticCache(backbone.config, slots)
        # [B, 1, slots, slots] causal + padding mask, in the form of the attention implementation
        full = create_causal_mask(config=backbone.config, inputs_embeds=embeds.new_empty(batch, slots, 0),
                                  attention_mask=torch.cat([mask, mask.new_ones(batch, slots - length)], dim=1),
                                  cache=None, allow_is_causal_skip=False)
        prompt_pass = self._compiled("prompt", self._prompt_pass, embeds.device, decode)
        last = prompt_pass(embeds, full[:, :, :length], position_ids, cache)
        if decode == "frozen" and embeds.device.type == "cpu":
            _unmark_static_addresses(cache)
        positions = position_ids[:, -1:] + torch.arange(1, ACTION_DIM, device=position_ids.device)
        decode_step = self._compiled("step", self._decode_step, embeds.device, decode)
        fed = 0

        def step(index: torch.Tensor) -> torch.Tensor:
            nonlocal fed
            slot = length + fed
            logits = decode_step(index, positions[:, fed:fed + 1], full[:, :, slot:slot + 1], cache)
            fed += 1
            return logits.clone() if compiled else logits  # CUDA graphs overwrite their outputs on replay

        return last, self._action_logits(last).float(), step

    def _prompt_pass(self, embeds: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor,
                     cache: StaticCache) -> torch.Tensor:
        """The prompt into `cache`; the last position's final hidden state `[B, hidden]`."""
        return self.language_model.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                                         cache=cache, use_cache=True).last_hidden_state[:, -1]

    def _decode_step(self, index: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor,
                     cache: StaticCache) -> torch.Tensor:
        """Action logits `[B, n_bins]` after feeding back `index [B]` (what `decode="compiled"` compiles)."""
        hidden = self.language_model.model(inputs_embeds=self._token_embeds(index), attention_mask=mask,
                                           position_ids=position_ids, cache=cache, use_cache=True).last_hidden_state
        return self._action_logits(hidden[:, -1]).float()

    def _compiled(self, name: str, fn: Callable[..., torch.Tensor], device: torch.device,
                  decode: str) -> Callable[..., torch.Tensor]:
        """`fn` as `decode` runs it: the decode step ("step") through `torch.compile` for "compiled" (once
        per device type; CUDA graphs on a GPU); on a CPU, for "frozen", every part (the visual tokens,
        the prompt pass and the step) compiled with the weights frozen in (`_check_frozen_weights`
        guards them); `fn` itself otherwise."""
        frozen = decode == "frozen" and device.type == "cpu"
        if not frozen and not (name == "step" and decode in ("compiled", "frozen")):
            return fn
        key = (name, device.type, "frozen" if frozen else "compiled")
        if key not in self._compiled_steps:
            if frozen:
                compiled = _under_inductor_config(torch.compile(fn, dynamic=False), FROZEN_INDUCTOR_OPTIONS)
            else:
                compiled = torch.compile(fn, mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)
            self._compiled_steps[key] = compiled
        return self._compiled_steps[key]

    def _check_frozen_weights(self) -> None:
        """Raise ValueError once a weight changed in place (version counters) since decode="frozen" first ran.

        Frozen graphs keep the weights of their first call, and compiling again in the same process does
        not refresh them (measured: the recompiled step still decoded the old weights' tokens)."""
        version = sum(p._version for p in self.parameters())
        if self._frozen_version is None:
            self._frozen_version = version
        elif version != self._frozen_version:
            raise ValueError("decode='frozen': the weights changed in place after they were compiled in "
                             "(an optimizer step, load_state_dict); reload the model with load_vla or use "
                             "decode='compiled'")

    def _held_cache(self, batch: int, slots: int, embeds: torch.Tensor) -> StaticCache:
        """A `StaticCache` kept per shape and reset for reuse: compiled graphs (and CUDA graphs) keep its
        addresses. The key has the KV heads of each layer, so pruning after a call gets a new cache."""
        kv_heads = tuple(width["num_key_value_heads"] for width in current_layer_widths(self.language_model))
        key = (batch, slots, embeds.dtype, embeds.device, kv_heads)
        if key in self._held_caches:
            self._held_caches[key].reset()
        else:
            self._held_caches[key] = StaticCache(self.language_model.model.config, slots)
        return self._held_caches[key]

    def action_indices_to_token_ids(self, action_indices: torch.Tensor) -> torch.Tensor:
        return action_indices + self.action_token_ids.start

    def append_action_tokens(self, batch: dict[str, torch.Tensor],
                             action_indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """A prompt batch (`input_ids`, `attention_mask`, ...) with `[B, 7]` action tokens appended,
        ready for `action_forward` / `action_loss`."""
        token_ids = self.action_indices_to_token_ids(action_indices.to(batch["input_ids"].device))
        return {
            **batch,
            "input_ids": torch.cat([batch["input_ids"], token_ids], dim=1),
            "attention_mask": torch.cat([batch["attention_mask"], torch.ones_like(token_ids)], dim=1),
        }

    def decode_actions(self, action_indices: torch.Tensor | np.ndarray, unnorm_key: str | None = None,
                       normalized: bool = False) -> np.ndarray:
        """Action-vocabulary indices `[B, 7]` -> actions `[B, 7]` (un-normalised unless `normalized`)."""
        token_ids = self.action_indices_to_token_ids(torch.as_tensor(action_indices)).cpu().numpy()
        actions = self._processor().action_tokenizer.decode(token_ids)
        return actions if normalized else unnormalize_actions(actions, self.config.norm_stats, unnorm_key)

    def _processor(self):
        if self.processor is None:
            raise RuntimeError("this model has no processor: load it with vla_compress.load_vla(...)")
        return self.processor

    def predict_action(self, images: np.ndarray | torch.Tensor | Sequence, instructions: Sequence[str] | str,
                       unnorm_key: str | None = None, temperature: float = 0.0,
                       generator: torch.Generator | None = None, decode: str = "dynamic",
                       prefill: Prefill | None = None) -> np.ndarray:
        """RGB uint8 images `[B, H, W, 3]` + one instruction each -> actions `[B, 7]` (float32).

        `instructions` is a list of B strings; a lone string is accepted for a batch of one image
        (`images[None]` and `"pick up the cube"`). An empty batch is a ValueError. `decode` is
        `generate_action_indices`' ("dynamic", "static", "compiled" or "frozen"), and so is `prefill`."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        check_decode(decode)
        if self.config.norm_stats:  # fail before any compute
            unnormalize_actions(np.zeros(ACTION_DIM, np.float32), self.config.norm_stats, unnorm_key)
        images = _as_image_batch(images)
        if isinstance(instructions, str):
            if images.shape[0] != 1:
                raise ValueError(f"instructions is one string for a batch of {images.shape[0]} images; pass a list "
                                 f"of {images.shape[0]} strings, one per image")
            instructions = [instructions]
        batch = self._processor()(images, instructions)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        decoded = self.generate_action_indices(**batch, temperature=temperature, generator=generator, decode=decode,
                                               prefill=prefill)
        return self.decode_actions(decoded["action_indices"], unnorm_key, normalized=not self.config.norm_stats)

    # ---- persistence -----------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """Write config (with per-layer widths), safetensors weights and the processor files."""
        self.config.llm_layer_widths = self.recorded_layer_widths()
        super().save_pretrained(save_directory, **kwargs)
        if self.processor is not None:
            self.processor.save_pretrained(save_directory)

    def recorded_layer_widths(self) -> list[dict] | None:
        """Per-layer widths to record in the config; `None` while every layer has the dense width."""
        widths = current_layer_widths(self.language_model)
        tc = self.config.text_config
        dense = {"num_attention_heads": tc.num_attention_heads, "num_key_value_heads": tc.num_key_value_heads,
                 "intermediate_size": tc.intermediate_size}
        return None if all(w == dense for w in widths) else widths
