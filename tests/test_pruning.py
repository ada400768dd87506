"""Pruning on the tiny preset: widths, parameter arithmetic, criteria, round trips, sparsity, errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vla_compress import load_vla
from vla_compress.calibration import calibration_batches
from vla_compress.modeling import build_model, preset_config
from vla_compress.modeling.widths import decoder_layers
from vla_compress.pruning import prune
from vla_compress.pruning.importance import ATTENTION, TaylorImportance, layer_groups

HIDDEN, HEADS, HEAD_DIM, MLP, LAYERS = 256, 8, 32, 704, 6


@pytest.fixture(scope="module")
def dense():
    return load_vla("tiny")


@pytest.fixture
def model(dense):
    return copy.deepcopy(dense)


@pytest.fixture(scope="module")
def calibration():
    rng = np.random.default_rng(0)
    return [{"image": rng.integers(0, 256, (112, 112, 3), dtype=np.uint8),
             "instruction": f"put the {colour} cube on the blue plate",
             "action": rng.uniform(-1, 1, 7).astype(np.float32)} for colour in ("red", "green")]


def _images(calibration):
    return np.stack([s["image"] for s in calibration]), [s["instruction"] for s in calibration]


def _layer_state(model, index):
    return {k: v.clone() for k, v in decoder_layers(model.language_model)[index].state_dict().items()}


@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_block_parameter_counts_match_the_ratio(model, ratio):
    first, last = _layer_state(model, 0), _layer_state(model, LAYERS - 1)
    before = sum(p.numel() for p in model.parameters())
    prune(model, ratio, importance="l1")
    # LLM-Pruner keeps int(channels * (1 - ratio)) channels and removes whole heads
    heads_removed = (HEADS * HEAD_DIM - int(HEADS * HEAD_DIM * (1 - ratio))) // HEAD_DIM
    channels_removed = MLP - int(MLP * (1 - ratio))
    per_layer = heads_removed * 4 * HIDDEN * HEAD_DIM + channels_removed * 3 * HIDDEN
    report = model.prune_report
    assert report.params_before == before and report.params_before - report.params_after == (LAYERS - 2) * per_layer
    assert report.llm_params_before - report.llm_params_after == (LAYERS - 2) * per_layer
    assert model.config.llm_layer_widths == report.layer_widths
    for index, width in enumerate(model.config.llm_layer_widths):
        pruned = 0 < index < LAYERS - 1
        assert width["num_attention_heads"] == (HEADS - heads_removed if pruned else HEADS)
        assert width["intermediate_size"] == (MLP - channels_removed if pruned else MLP)
    for index, state in ((0, first), (LAYERS - 1, last)):
        for key, value in _layer_state(model, index).items():
            assert torch.equal(value, state[key]), key


def test_taylor_pruned_model_acts_and_round_trips(model, calibration, tmp_path):
    prune(model, 0.5, importance="taylor", calibration=calibration, layers=range(1, 4))
    assert [w["num_attention_heads"] for w in model.config.llm_layer_widths] == [8, 4, 4, 4, 8, 8]
    images, instructions = _images(calibration)
    actions = model.predict_action(images, instructions)
    assert actions.shape == (2, 7) and np.isfinite(actions).all()
    model.save_pretrained(tmp_path)
    reloaded = load_vla(tmp_path)
    np.testing.assert_array_equal(reloaded.predict_action(images, instructions), actions)
    batch = next(calibration_batches(model, calibration))
    torch.testing.assert_close(reloaded.action_forward(**batch).action_logits,
                               model.eval().action_forward(**batch).action_logits, rtol=0, atol=0)


def test_taylor_ranks_a_zeroed_head_lowest(model, calibration):
    attn = decoder_layers(model.language_model)[2].self_attn
    head = slice(3 * HEAD_DIM, 4 * HEAD_DIM)
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight[head] = 0
        attn.o_proj.weight[:, head] = 0
    groups = layer_groups(model, [2])
    taylor = TaylorImportance(model, groups, calibration_batches(model, calibration))
    scores = taylor(groups[0])
    assert groups[0].kind == ATTENTION and int(scores.argmin()) == 3 and float(scores.min()) == 0.0
    assert all(p.grad is None for p in model.parameters())
    prune(model, 1 / HEADS, importance="taylor", calibration=calibration, layers=[2])
    q = decoder_layers(model.language_model)[2].self_attn.q_proj.weight
    assert q.shape[0] == 7 * HEAD_DIM and all(q[i * HEAD_DIM:(i + 1) * HEAD_DIM].abs().sum() > 0 for i in range(7))


def test_gqa_keeps_kv_groups_whole_and_accepts_a_callable():
    model = build_model(preset_config("tiny", text_config={"num_key_value_heads": 4}))
    attn = decoder_layers(model.language_model)[1].self_attn
    q, k = attn.q_proj.weight.clone(), attn.k_proj.weight.clone()

    def prefer_last_groups(group):  # attention: units are KV groups; keep groups 2 and 3
        return torch.arange(group.num_units, dtype=torch.float)

    prune(model, 0.5, importance=prefer_last_groups)
    attn = decoder_layers(model.language_model)[1].self_attn
    assert model.config.llm_layer_widths[1]["num_key_value_heads"] == 2
    assert model.config.llm_layer_widths[1]["num_attention_heads"] == 4
    torch.testing.assert_close(attn.q_proj.weight, q[4 * HEAD_DIM:])  # heads 4..7 share KV groups 2, 3
    torch.testing.assert_close(attn.k_proj.weight, k[2 * HEAD_DIM:])
    assert model.prune_report.importance == "prefer_last_groups"


def test_round_to_keeps_widths_multiples(model):
    prune(model, 0.4, importance="l2", round_to=64)
    width = model.config.llm_layer_widths[1]
    assert width["num_attention_heads"] * HEAD_DIM % 64 == 0 and width["intermediate_size"] % 64 == 0
    assert width == {"num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 384}


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_unstructured_sparsity_survives_adamw_and_saves_plain(model, calibration, method, tmp_path):
    prune(model, 0.5, method=method, calibration=calibration if method == "wanda" else None)
    linears = [m for m in decoder_layers(model.language_model).modules() if isinstance(m, torch.nn.Linear)]
    for linear in linears:
        zeros = linear.weight == 0
        if method == "wanda":
            assert (zeros.sum(1) == linear.in_features // 2).all()
        else:
            assert int(zeros.sum()) == linear.weight.numel() // 2
    masks = [linear.weight == 0 for linear in linears]
    model.vision_backbone.requires_grad_(False)  # fine-tune the LLM only: keeps the test fast
    optimizer = torch.optim.AdamW(model.language_model.parameters(), lr=1e-2, weight_decay=0.1)
    batch = next(calibration_batches(model, calibration))
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        model.action_loss(**batch).backward()
        optimizer.step()
    for linear, mask in zip(linears, masks):
        assert torch.equal(linear.weight == 0, mask)
    assert model.prune_report.sparsity == pytest.approx(0.5, abs=1e-3)
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "model.safetensors").keys()
    assert not [k for k in keys if "mask" in k or "parametrizations" in k]
    reloaded = load_vla(tmp_path)
    for (name, value), (_, original) in zip(reloaded.state_dict().items(), model.state_dict().items()):
        assert torch.equal(value, original), name


def test_flap_adapts_widths_and_bias_compensation_helps(dense, calibration, tmp_path):
    batch = next(calibration_batches(dense, calibration))
    reference = dense.eval().action_forward(**batch).critic_features
    errors = {}
    for compensate in (False, True):
        model = prune(copy.deepcopy(dense), 0.3, method="flap", calibration=calibration, bias_compensation=compensate)
        errors[compensate] = (model.eval().action_forward(**batch).critic_features - reference).pow(2).mean()
    widths = model.config.llm_layer_widths[1:-1]
    assert len({(w["num_attention_heads"], w["intermediate_size"]) for w in widths}) > 1
    assert errors[True] < errors[False]
    assert model.config.text_config.attention_bias and model.config.text_config.mlp_bias
    removed = sum((HEADS - w["num_attention_heads"]) * 4 * HIDDEN * HEAD_DIM
                  + (MLP - w["intermediate_size"]) * 3 * HIDDEN
                  for w in widths)  # `ratio` of the prunable parameters of the pruned layers, to one unit
    target = 0.3 * (LAYERS - 2) * (4 * HIDDEN * HIDDEN + 3 * HIDDEN * MLP)
    assert target <= removed < target + 4 * HIDDEN * HEAD_DIM
    model.save_pretrained(tmp_path)
    reloaded = load_vla(tmp_path)
    torch.testing.assert_close(reloaded.action_forward(**batch).critic_features,
                               model.action_forward(**batch).critic_features, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, argument", [
    ({"ratio": 0.0}, "ratio"), ({"ratio": 1.0}, "ratio"), ({"ratio": 1.5}, "ratio"),
    ({"ratio": 0.5, "importance": "entropy"}, "importance"),
    ({"ratio": 0.5, "method": "sparsegpt"}, "method"),
    ({"ratio": 0.5}, "calibration"),
    ({"ratio": 0.5, "importance": "taylor"}, "calibration"),
    ({"ratio": 0.5, "method": "wanda"}, "calibration"),
    ({"ratio": 0.5, "method": "flap"}, "calibration"),
    ({"ratio": 0.9, "importance": "l1", "round_to": 64}, "ratio"),
    ({"ratio": 0.5, "importance": "l1", "layers": [1, 6]}, "layers"),
    ({"ratio": 0.5, "importance": "l1", "layers": [-1]}, "layers"),
    ({"ratio": 0.5, "method": "magnitude", "round_to": 8}, "round_to"),
])
def test_bad_arguments_raise_before_any_work(dense, kwargs, argument):
    widths = [dict(w) for w in dense.config.llm_layer_widths or []]
    with pytest.raises(ValueError, match=argument):
        prune(dense, **kwargs)
    assert (dense.config.llm_layer_widths or []) == widths
    assert sum(p.numel() for p in dense.parameters()) == dense.num_parameters()
    assert decoder_layers(dense.language_model)[1].self_attn.q_proj.out_features == HEADS * HEAD_DIM


def _reference_taylor(model, samples, layer: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM-Pruner's formulas written out per head / channel, from per-sample gradients (autograd.grad)."""
    attn, mlp = decoder_layers(model.language_model)[layer].self_attn, decoder_layers(model.language_model)[layer].mlp
    weights = [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, attn.o_proj.weight,
               mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]
    model.eval()
    grads = []
    for sample in samples:
        batch = next(calibration_batches(model, [sample], batch_size=1))
        grads.append(torch.autograd.grad(model.action_loss(**batch), weights))
    first = [torch.stack([g[i] for g in grads]).mean(0) for i in range(len(weights))]
    second = [torch.stack([g[i] ** 2 for g in grads]).mean(0) for i in range(len(weights))]
    salience = []
    for w, g, f in zip(weights, first, second):
        w = w.detach()
        salience.append({"param_first": w * g, "param_second": w * f * w,
                         "param_mix": w * g - 0.5 * w * f * w, "vectorize": w * g}[mode])

    def channel(s: torch.Tensor, index: int, axis: int) -> torch.Tensor:
        values = s[index] if axis == 0 else s[:, index]
        return values.sum().abs() if mode == "vectorize" else values.abs().sum()

    heads = torch.tensor([sum(channel(s, c, axis) for s, axis in zip(salience[:4], (0, 0, 0, 1))
                              for c in range(h * HEAD_DIM, (h + 1) * HEAD_DIM)) for h in range(HEADS)])
    channels = torch.tensor([sum(channel(s, c, axis) for s, axis in zip(salience[4:], (0, 0, 1)))
                             for c in range(MLP)])
    return heads, channels


@pytest.mark.parametrize("mode", ["param_mix", "param_first", "param_second", "vectorize"])
def test_taylor_modes_match_llm_pruner_formulas(model, calibration, mode):
    heads, channels = _reference_taylor(model, calibration, 2, mode)
    groups = layer_groups(model, [2])
    taylor = TaylorImportance(model, groups, calibration_batches(model, calibration, batch_size=2), mode)
    torch.testing.assert_close(taylor(groups[0]), heads.float(), rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(taylor(groups[1]), channels.float(), rtol=1e-4, atol=1e-9)


def test_importance_taylor_is_param_mix_and_modes_have_names(model, calibration):
    by_default = prune(copy.deepcopy(model), 0.5, calibration=calibration, layers=[2]).config.llm_layer_widths
    named = prune(model, 0.5, importance="taylor_param_mix", calibration=calibration, layers=[2])
    assert named.config.llm_layer_widths == by_default
    with pytest.raises(ValueError, match="taylor_vectorize"):
        prune(model, 0.5, importance="taylor_bogus", calibration=calibration)


def test_kept_widths_round_as_llm_pruner():
    from vla_compress.pruning.structured import kept_units

    assert kept_units(11008, 0.9, 1) == 1100  # int(11008 * 0.1) on Llama-2-7B
    assert kept_units(32, 0.9, 1, unit_size=128) == 4  # 4096 channels, heads of 128
    assert kept_units(704, 0.5, 1) == 352 and kept_units(8, 0.125, 1, unit_size=32) == 7


def test_typed_configs_equal_the_shorthand(model, calibration):
    from vla_compress import BlockPruning, MagnitudePruning

    shorthand = prune(copy.deepcopy(model), 0.5, importance="l2", layers=[1, 2])
    typed = prune(copy.deepcopy(model), BlockPruning(ratio=0.5, importance="l2", layers=[1, 2]))
    assert typed.config.llm_layer_widths == shorthand.config.llm_layer_widths
    for a, b in zip(typed.state_dict().values(), shorthand.state_dict().values()):
        assert torch.equal(a, b)
    assert prune(copy.deepcopy(model), MagnitudePruning(ratio=0.3)).prune_report.method == "magnitude"
    assert prune(copy.deepcopy(model), ratio=0.5, importance="l1").prune_report.ratio == 0.5
    with pytest.raises(ValueError, match="pass only calibration"):
        prune(model, BlockPruning(ratio=0.5), importance="l1")
    with pytest.raises(ValueError, match="not both"):
        prune(model, BlockPruning(ratio=0.5), ratio=0.5)
