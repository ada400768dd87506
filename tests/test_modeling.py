"""The OpenVLA model: checkpoint layout, round trips, batched decoding, action tokens, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from vla_compress import load_vla
from vla_compress.modeling import (
    ActionTokenizer,
    OpenVLAForActionPrediction,
    build_model,
    component_sizes,
    normalize_actions,
    preset_config,
    unnormalize_actions,
)
from vla_compress.modeling.presets import PRESETS


@pytest.fixture(scope="module")
def openvla_7b_meta():
    with torch.device("meta"):
        return OpenVLAForActionPrediction(preset_config("openvla-7b"))


def test_openvla_7b_preset_matches_public_checkpoint_layout(openvla_7b_meta):
    state = openvla_7b_meta.state_dict()
    expected_shapes = {
        "vision_backbone.featurizer.patch_embed.proj.weight": (1024, 3, 14, 14),
        "vision_backbone.featurizer.reg_token": (1, 4, 1024),
        "vision_backbone.featurizer.blocks.0.ls1.scale_factor": (1024,),
        "vision_backbone.featurizer.blocks.23.mlp.fc2.weight": (1024, 4096),
        "vision_backbone.fused_featurizer.patch_embed.proj.weight": (1152, 3, 14, 14),
        "vision_backbone.fused_featurizer.blocks.26.attn.qkv.weight": (3456, 1152),
        "projector.fc1.weight": (8704, 2176),
        "projector.fc2.weight": (4096, 8704),
        "projector.fc3.weight": (4096, 4096),
        "language_model.model.embed_tokens.weight": (32064, 4096),
        "language_model.model.layers.31.self_attn.q_proj.weight": (4096, 4096),
        "language_model.model.layers.0.mlp.gate_proj.weight": (11008, 4096),
        "language_model.lm_head.weight": (32064, 4096),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(key.endswith(".gamma") for key in state), "LayerScale must be stored as scale_factor"


def test_openvla_7b_parameter_count(openvla_7b_meta):
    sizes = component_sizes(openvla_7b_meta)
    assert sizes["total"].params == 7_541_237_184  # openvla-7b's published parameter count
    llm = sizes["language_model"].params + sizes["lm_head"].params
    assert 6.7e9 < llm < 6.8e9


def test_small_preset_keeps_llm_share():
    model = build_model(preset_config("tiny"))
    sizes = component_sizes(model)
    llm = sizes["language_model"].params + sizes["lm_head"].params
    assert 0.85 <= llm / sizes["total"].params <= 0.92
    assert set(model.state_dict()).issuperset({"projector.fc3.weight", "vision_backbone.fused_featurizer.norm.weight"})


def test_action_tokenizer_round_trip_within_half_bin():
    tokenizer = ActionTokenizer(vocab_end=32000)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(1000, 7))
    ids = tokenizer.encode(actions)
    assert ids.min() >= 32000 - 256 and ids.max() <= 31999
    half_bin = (tokenizer.bins[1] - tokenizer.bins[0]) / 2
    assert np.abs(tokenizer.decode(ids) - actions).max() <= half_bin + 1e-6


def test_normalisation_round_trip_and_gripper_passthrough(tiny_model):
    stats = tiny_model.config.norm_stats
    actions = np.array([[0.02, -0.01, 0.0, 0.05, -0.05, 0.0, -1.0]], np.float32)
    assert np.allclose(unnormalize_actions(normalize_actions(actions, stats), stats), actions, atol=1e-6)
    assert normalize_actions(actions, stats)[0, 6] == -1.0


def test_batch_equals_one_by_one(tiny_model, images, instructions):
    batched = tiny_model.predict_action(images, instructions)
    single = np.concatenate([tiny_model.predict_action(images[i:i + 1], instructions[i:i + 1]) for i in range(3)])
    assert batched.shape == (3, 7) and batched.dtype == np.float32
    np.testing.assert_array_equal(batched, single)
    assert len({tuple(row) for row in batched}) > 1, "fixture should give varied actions"


def test_predicted_actions_are_unnormalised_bin_centres(tiny_model, images, instructions):
    out = tiny_model.predict_action(images, instructions)
    assert np.all(np.abs(out[:, :3]) <= 0.05 + 1e-6) and np.all(np.abs(out[:, 6]) <= 1.0)


def test_save_pretrained_round_trip_identical_actions(tiny_model, images, instructions, tmp_path):
    before = tiny_model.predict_action(images, instructions)
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "openvla" and config["norm_stats"]
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "tokenizer.json").exists()
    reloaded = load_vla(tmp_path)
    np.testing.assert_array_equal(reloaded.predict_action(images, instructions), before)
    reloaded.save_pretrained(tmp_path / "again")  # a copy loaded from a directory saves no loading options
    assert not {"is_local", "local_files_only"} & set(json.loads((tmp_path / "again" / "tokenizer_config.json")
                                                                  .read_text()))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_action_forward_log_probs_match_decoding(tiny_model, images, instructions, temperature):
    batch = tiny_model.processor(images, instructions)
    decoded = tiny_model.generate_action_indices(**batch, temperature=temperature,
                                                 generator=torch.Generator().manual_seed(0))
    out = tiny_model.action_forward(**tiny_model.append_action_tokens(batch, decoded["action_indices"]))
    log_probs, entropy = tiny_model.action_token_log_probs(out.action_logits, decoded["action_indices"], temperature)
    torch.testing.assert_close(log_probs, decoded["log_probs"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.critic_features, decoded["critic_features"], atol=1e-4, rtol=1e-4)
    assert out.action_logits.shape == (3, 7, 256) and torch.all(entropy > 0)


def test_action_loss_is_finite_and_differentiable(tiny_model, images, instructions):
    actions = np.zeros((3, 7), np.float32)
    loss = tiny_model.action_loss(**tiny_model.processor(images, instructions, actions=actions))
    loss.backward()
    assert torch.isfinite(loss) and tiny_model.language_model.lm_head.weight.grad is not None


def test_upstream_forward_with_labels(tiny_model, images, instructions):
    batch = tiny_model.processor(images[:1], instructions[:1], actions=np.zeros((1, 7), np.float32))
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, -7:] = batch["input_ids"][:, -7:]
    out = tiny_model(**batch, labels=labels)
    expected = tiny_model.action_loss(**batch)
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(images=np.zeros((2, 32, 32), np.uint8)), "images"),
        (dict(images=np.zeros((2, 32, 32, 4), np.uint8)), "images"),
        (dict(images=np.zeros((2, 32, 32, 3), np.float32)), "uint8"),
        (dict(instructions=["only one"]), "instructions"),
        (dict(temperature=-1.0), "temperature"),
        (dict(images=np.zeros((0, 32, 32, 3), np.uint8), instructions=[]), "images is an empty batch"),
        (dict(instructions="a"), "instructions is one string for a batch of 2 images"),
        (dict(instructions=[]), "instructions has 0 entries"),
    ],
)
def test_predict_action_rejects_bad_input(tiny_model, kwargs, match):
    args = {"images": np.zeros((2, 32, 32, 3), np.uint8), "instructions": ["a", "b"], **kwargs}
    with pytest.raises(ValueError, match=match):
        tiny_model.predict_action(**args)


def test_predict_action_takes_a_lone_string_for_a_batch_of_one(tiny_model, images, instructions):
    expected = tiny_model.predict_action(images[:1], instructions[:1])
    np.testing.assert_array_equal(tiny_model.predict_action(images[:1], instructions[0]), expected)


def test_unnorm_key_required_with_several_datasets(tiny_model, images, instructions):
    stats = tiny_model.config.norm_stats["maniskill"]
    tiny_model.config.norm_stats = {"a": stats, "b": stats}
    with pytest.raises(ValueError, match="unnorm_key"):
        tiny_model.predict_action(images, instructions)
    with pytest.raises(ValueError, match="unnorm_key"):
        tiny_model.predict_action(images, instructions, unnorm_key="c")
    assert tiny_model.predict_action(images, instructions, unnorm_key="b").shape == (3, 7)


def test_load_vla_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        load_vla("no-such-preset")
    with pytest.raises(ValueError, match="dtype"):
        load_vla("tiny", dtype="int3")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="openvla"):
        load_vla(tmp_path)
    with pytest.raises(ValueError, match="preset"):
        preset_config("giant")
    assert "openvla-7b" in PRESETS


def test_load_vla_pruned_weights_with_a_dense_config_raise_value_error(tmp_path):
    """docs/errors.md: weights and config.json from different models are a ValueError, not transformers'
    RuntimeError (and the model is not built with re-initialised layers)."""
    from vla_compress import prune

    prune(load_vla("tiny"), 0.5, importance="l2").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "llm_layer_widths": None}))
    with pytest.raises(ValueError, match=r"checkpoint .* does not match its config: \d+ tensors have other shapes: "
                                         r"language_model\.model\.layers\.1\."):
        load_vla(tmp_path)


def test_load_vla_rejects_a_config_json_that_is_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"name_or_path=.*config.json holds a list, not a JSON object"):
        load_vla(tmp_path)


def test_load_vla_rejects_unknown_and_absent_devices(monkeypatch):
    with pytest.raises(ValueError, match=r"device='bogus' is unknown; allowed: cpu"):
        load_vla("tiny", device="bogus")
    with pytest.raises(ValueError, match=r"device='cuda:99' is not available; allowed: cpu"):
        load_vla("tiny", device="cuda:99")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match=r"device='cuda' is not available; allowed: cpu, meta \(no CUDA device here\)"):
        load_vla("tiny", device="cuda")


@pytest.mark.parametrize("quantized", [False, True])
def test_load_vla_truncated_checkpoint_file_raises_value_error(tmp_path, quantized):
    """Each file of a dense or quantized checkpoint cut in half: a ValueError naming the directory."""
    from vla_compress.quantization import quantize

    model = load_vla("tiny")
    good = tmp_path / "good"
    (quantize(model, 8, "bnb") if quantized else model).save_pretrained(good)
    for path in sorted(good.iterdir()):
        broken = tmp_path / f"broken_{path.name}"
        shutil.copytree(good, broken)
        data = (broken / path.name).read_bytes()
        (broken / path.name).write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=r"name_or_path=.*broken_.*(missing or corrupted|not valid JSON)"):
            load_vla(broken)


def test_load_vla_dtype_and_device():
    model = load_vla("tiny", device="cpu", dtype="bf16")
    assert model.language_model.lm_head.weight.dtype == torch.bfloat16
