"""One path from robot samples to model batches: SFT, resident demos, pruning calibration and GPTQ agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_compress.calibration import calibration_batches
from vla_compress.data import ResidentDemos
from vla_compress.modeling import build_model, normalize_actions, preset_config
from vla_compress.quantization import quantize
from vla_compress.quantization.gptq import _hessians
from vla_compress.recovery.sft import make_batch

# real robot data in metres: the example, where raw and normalised actions tokenise differently
METRE_STATS = {"robot": {"action": {"q01": [-0.02] * 3 + [-0.05] * 3 + [0.0], "q99": [0.02] * 3 + [0.05] * 3 + [1.0],
                                    "mask": [True] * 6 + [False]}}}
ACTION = np.array([0.01, -0.015, 0.0, 0.03, -0.05, 0.0, 1.0], np.float32)


@pytest.fixture
def model():
    torch.manual_seed(0)
    config = preset_config("tiny", text_config={"num_hidden_layers": 2}, image_sizes=[56, 56])
    model = build_model(config)
    model.config.norm_stats = METRE_STATS
    return model


def samples(n: int = 4) -> list[dict]:
    rng = np.random.default_rng(0)
    texts = ["put the red cube on the blue plate", "put the green cube on the plate now please"]  # mid-padding
    return [{"image": rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), "instruction": texts[i % 2],
             "action": ACTION * (1 - 0.2 * i)} for i in range(n)]


def test_sft_calibration_gptq_and_resident_demos_see_the_same_tokens(model, monkeypatch):
    data = samples()
    expected = model.processor.tokenize([s["instruction"] for s in data],
                                        normalize_actions(np.stack([s["action"] for s in data]), METRE_STATS))
    raw = model.processor.action_tokenizer.encode(np.stack([s["action"] for s in data]).clip(-1, 1))
    assert not np.array_equal(expected["input_ids"][:, -7:].numpy(), raw)  # normalising matters here

    sft = make_batch(model, data)["input_ids"]
    calibration = next(calibration_batches(model, data, batch_size=len(data)))["input_ids"]
    resident = ResidentDemos(data, model.processor, METRE_STATS).make_batch(model, np.arange(len(data)))["input_ids"]
    seen: list[torch.Tensor] = []
    forward = model.action_forward
    monkeypatch.setattr(model, "action_forward", lambda *a, **k: seen.append(k["input_ids"]) or forward(*a, **k))
    quantize(model, 4, "gptq", calibration=data, batch_size=len(data), group_size=32)
    for got in (sft, calibration, resident, seen[0]):
        assert torch.equal(got, expected["input_ids"])


def test_gptq_hessian_leaves_out_padding(model):
    """A mid-padded batch of two gives the Hessian of the two samples run one at a time (no padding)."""
    data = samples(2)
    names = ["language_model.model.layers.0.self_attn.q_proj", "language_model.model.layers.1.mlp.down_proj"]
    together = _hessians(model, names, list(calibration_batches(model, data, batch_size=2)))
    alone = _hessians(model, names, list(calibration_batches(model, data, batch_size=1)))
    batch = next(calibration_batches(model, data, batch_size=2))
    assert (batch["attention_mask"] == 0).any()  # the shorter prompt is padded
    for name in names:
        torch.testing.assert_close(together[name], alone[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("change", "match"), [
    (lambda s: s.update(image=s["image"].astype(np.float32) / 255), r"samples\[1\]\['image'\] is float32"),
    (lambda s: s.update(image=s["image"][..., :1]), r"samples\[1\]\['image'\] is uint8 \(48, 48, 1\)"),
    (lambda s: s.update(action=np.full(7, np.nan, np.float32)), r"samples\[1\]\['action'\] .* expected finite"),
    (lambda s: s.update(action=np.zeros(3, np.float32)), r"samples\[1\]\['action'\] has shape \(3,\)"),
    (lambda s: s.update(instruction=None), r"samples\[1\]\['instruction'\] is a NoneType"),
    (lambda s: s.pop("action"), r"samples\[1\] lacks an 'action'"),
    (lambda s: s.pop("image"), r"samples\[1\] has no 'image'"),
])
def test_bad_samples_name_the_sample_and_field(model, change, match):
    data = samples(3)
    change(data[1])
    for build in (lambda: make_batch(model, data), lambda: ResidentDemos(data, model.processor, METRE_STATS),
                  lambda: list(calibration_batches(model, data, batch_size=3))):
        with pytest.raises(ValueError, match=match):
            build()
