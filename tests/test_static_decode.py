"""decode="static" / "compiled" / "frozen" give the actions of decode="dynamic": greedy and sampled, batch 1 and
mid-padded batches, pruned per-layer widths, quantized layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vla_compress import load_vla
from vla_compress.modeling.modeling_openvla import COMPILED_CACHE_MULTIPLE
from vla_compress.modeling.widths import current_layer_widths
from vla_compress.pruning import prune
from vla_compress.quantization import quantize

pytestmark = pytest.mark.usefixtures("one_thread")

# Different lengths: the shorter instructions are mid-padded ([BOS, PAD.., prompt, ▁]).
INSTRUCTIONS = ["put the red cube on the blue plate", "lift the cube", "put the green cube on the yellow plate"]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)


def tiny() -> nn.Module:
    """The tiny preset with a sharper output head, so random actions differ across inputs and steps."""
    model = load_vla("tiny", seed=0).eval()
    with torch.no_grad():
        model.language_model.lm_head.weight.mul_(40.0)
    return model


def decoded(model: nn.Module, batch: dict, decode: str, temperature: float = 0.0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return model.generate_action_indices(**batch, temperature=temperature, generator=generator, decode=decode)


def assert_same_decoding(model: nn.Module, batch: dict, decode: str = "static") -> None:
    """Greedy and sampled (seeded generator) decoding give the dynamic path's indices and log-probs."""
    for temperature in (0.0, 1.0):
        reference, other = decoded(model, batch, "dynamic", temperature), decoded(model, batch, decode, temperature)
        assert torch.equal(other["action_indices"], reference["action_indices"])
        torch.testing.assert_close(other["log_probs"], reference["log_probs"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(other["critic_features"], reference["critic_features"], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny()


@pytest.mark.parametrize("rows", [[1], [0, 1, 2]], ids=["batch1", "mid_padded"])
def test_static_matches_dynamic(model, images, rows):
    batch = model.processor(images[rows], [INSTRUCTIONS[i] for i in rows])
    if len(rows) > 1:
        assert (batch["attention_mask"] == 0).any()  # a mid-padded batch
    assert_same_decoding(model, batch)
    greedy = decoded(model, batch, "static")["action_indices"]
    assert len(set(greedy.flatten().tolist())) > 1  # not a degenerate model
    sampled = [decoded(model, batch, "static", 1.0)["action_indices"] for _ in range(2)]
    assert torch.equal(*sampled)  # the generator's seed decides the samples


def test_predict_action_paths_agree(model, images):
    static = model.predict_action(images, INSTRUCTIONS, decode="static")
    np.testing.assert_array_equal(static, model.predict_action(images, INSTRUCTIONS, decode="dynamic"))
    np.testing.assert_array_equal(static, model.predict_action(images, INSTRUCTIONS))  # the default: dynamic


def test_pruned_per_layer_widths(images):
    model = prune(tiny(), 0.5, importance="l2", layers=[1, 2])
    model = prune(model, 0.25, importance="l2", layers=[3])
    kv_heads = [width["num_key_value_heads"] for width in current_layer_widths(model.language_model)]
    assert len(set(kv_heads)) == 3  # dense, half and three quarters of the KV heads
    assert_same_decoding(model, model.processor(images, INSTRUCTIONS))


@pytest.mark.parametrize(("method", "bits"), [("quanto", 8), ("bnb", 4)])
def test_quantized_layers(images, method, bits):
    model = quantize(tiny(), bits, method)
    assert type(model.language_model.model.layers[0].self_attn.q_proj) is not nn.Linear
    assert_same_decoding(model, model.processor(images, INSTRUCTIONS))


def test_compiled_step_matches_and_compiles_once(monkeypatch, images):
    """decode="compiled" through dynamo, with a counting eager backend (inductor takes ~30 s a graph here)."""
    graphs = []

    def counting_backend(graph_module: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(graph_module)
        return graph_module.forward

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compile_(fn, backend=counting_backend, dynamic=False))
    torch._dynamo.reset()
    try:
        model = tiny()
        batch = model.processor(images, INSTRUCTIONS)
        assert_same_decoding(model, batch, decode="compiled")
        assert graphs and len(model._held_caches) == 1
        compiled = len(graphs)
        assert_same_decoding(model, batch, decode="compiled")  # steps and calls of one shape: no recompile
        assert len(graphs) == compiled and len(model._held_caches) == 1
        assert next(iter(model._held_caches))[1] % COMPILED_CACHE_MULTIPLE == 0
    finally:
        torch._dynamo.reset()


def test_frozen_compiles_every_part_with_frozen_weights_and_refuses_changed_ones(monkeypatch, images):
    """decode="frozen": the visual tokens, the prompt pass and the step compile with inductor's freezing on;
    a weight updated in place afterwards raises (a frozen graph would decode the old weights)."""
    calls, frozen_at_call = [], []
    compile_ = torch.compile

    def recording_compile(fn, **kwargs):
        calls.append(fn.__name__)
        compiled = compile_(fn, backend="eager", dynamic=False)

        def run(*args):  # inductor's freezing must be on when the graph compiles (at its calls)
            frozen_at_call.append((fn.__name__, torch._inductor.config.freezing))
            return compiled(*args)

        return run

    monkeypatch.setattr(torch, "compile", recording_compile)
    torch._dynamo.reset()
    try:
        model = tiny()
        batch = model.processor(images, INSTRUCTIONS)
        assert_same_decoding(model, batch, decode="frozen")
        assert calls == ["_visual_tokens", "_prompt_pass", "_decode_step"]
        assert set(frozen_at_call) == {("_visual_tokens", True), ("_prompt_pass", True), ("_decode_step", True)}
        assert not torch._inductor.config.freezing  # the patch ends with the call
        assert_same_decoding(model, batch, decode="frozen")
        assert len(calls) == 3  # same weights: the graphs are reused
        with torch.no_grad():
            model.language_model.model.layers[0].mlp.down_proj.weight.mul_(1.5)  # an optimizer step, say
        with pytest.raises(ValueError, match="decode='frozen': the weights changed"):
            model.predict_action(images, INSTRUCTIONS, decode="frozen")
    finally:
        torch._dynamo.reset()


@pytest.mark.slow
def test_frozen_with_inductor_gives_the_static_actions(images):
    """The real freezing compile (tens of seconds here) decodes what decode="static" decodes."""
    torch._dynamo.reset()
    try:
        model = tiny()
        batch = model.processor(images[:1], INSTRUCTIONS[:1])
        frozen = decoded(model, batch, "frozen")["action_indices"]
        assert torch.equal(frozen, decoded(model, batch, "static")["action_indices"])
    finally:
        torch._dynamo.reset()


def test_bad_decode_raises(model, images):
    batch = model.processor(images[:1], INSTRUCTIONS[:1])
    with pytest.raises(ValueError, match=r"decode='fast'.*allowed: \('dynamic', 'static', 'compiled', 'frozen'\)"):
        model.generate_action_indices(**batch, decode="fast")
    with pytest.raises(ValueError, match="decode="):
        model.predict_action(images[:1], INSTRUCTIONS[:1], decode="eager")
