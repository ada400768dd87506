"""SFT: it learns, it resumes exactly, it refuses bad configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vla_compress.modeling import build_model, preset_config
from vla_compress.recovery.checkpoint import list_checkpoints
from vla_compress.recovery.metrics import read_metrics
from vla_compress.recovery.sft import SFTConfig, held_out_metrics, train_sft


def synthetic_samples(n: int, seed: int) -> list[dict]:
    """Colour in the instruction and image brightness decide the action."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        red = bool(rng.integers(2))
        image = np.full((48, 48, 3), 40 if red else 210, np.uint8) + rng.integers(0, 10, (48, 48, 3), dtype=np.uint8)
        action = np.array([0.5 if red else -0.5] * 6 + [1.0 if red else -1.0], np.float32)
        colour = "red" if red else "blue"
        samples.append({"image": image, "instruction": f"put the {colour} cube on the plate", "action": action})
    return samples


def small_model():
    torch.manual_seed(0)
    config = preset_config("tiny", text_config={"num_hidden_layers": 2}, image_sizes=[56, 56])
    return build_model(config)


def test_sft_lowers_held_out_action_loss(tmp_path):
    model = small_model()
    held_out = synthetic_samples(16, seed=1)
    before = held_out_metrics(model, held_out)["eval/action_loss"]
    config = SFTConfig(data=synthetic_samples(64, seed=0), eval_data=held_out, steps=12, batch_size=8,
                       learning_rate=1e-3, warmup_steps=2, eval_every=6, log_every=2, output_dir=tmp_path,
                       checkpoint_every=6, progress=False)
    model = train_sft(model, config)
    after = held_out_metrics(model, held_out)["eval/action_loss"]
    assert after < 0.5 * before
    keys = set().union(*read_metrics(tmp_path))
    logged = {"losses/action_loss", "charts/learning_rate", "losses/grad_norm", "eval/action_loss",
              "eval/token_accuracy"}
    assert logged <= keys
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000006", "step_00000012"]


class Killed(Exception):
    pass


def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    data = synthetic_samples(32, seed=0)
    common = dict(data=data, steps=4, batch_size=4, learning_rate=1e-3, warmup_steps=1, checkpoint_every=2,
                  progress=False)
    uninterrupted = train_sft(small_model(), SFTConfig(**common, output_dir=tmp_path / "a"))

    calls = {"n": 0}

    def crash_at_step_3(model):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed
        return {}

    with pytest.raises(Killed):
        train_sft(small_model(), SFTConfig(**common, output_dir=tmp_path / "b", eval_fn=crash_at_step_3, eval_every=1))
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_00000002"]
    resumed = train_sft(small_model(), SFTConfig(**common, output_dir=tmp_path / "b"))
    for (name, a), (_, b) in zip(uninterrupted.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(data=None), "data"),
        (dict(data=[]), "empty"),
        (dict(steps=-1), "steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(lora_rank=0), "lora_rank"),
        (dict(learning_rate=float("inf")), r"SFTConfig.learning_rate must be a finite number > 0, got inf"),
        (dict(learning_rate=float("nan")), r"SFTConfig.learning_rate must be a finite number > 0, got nan"),
        (dict(learning_rate=-1e-3), r"SFTConfig.learning_rate must be"),
        (dict(max_grad_norm=float("nan")), r"SFTConfig.max_grad_norm must be a number > 0, got nan"),
        (dict(max_grad_norm=-1.0), r"SFTConfig.max_grad_norm must be a number > 0, got -1.0"),
        (dict(steps=2.5), r"SFTConfig.steps must be an int >= 1, got 2.5"),
        (dict(steps=True), r"SFTConfig.steps must be an int >= 1, got True"),
        (dict(warmup_steps=1.5), r"SFTConfig.warmup_steps must be an int >= 0"),
        (dict(min_lr_ratio=float("nan")), r"SFTConfig.min_lr_ratio"),
    ],
)
def test_bad_config_raises_before_work(overrides, match):
    config = SFTConfig(**{"data": synthetic_samples(2, 0), **overrides})
    with pytest.raises(ValueError, match=match):
        train_sft(small_model(), config)


def short_run(output_dir, **overrides) -> SFTConfig:
    settings = dict(data=synthetic_samples(16, seed=0), steps=2, batch_size=4, learning_rate=1e-3, warmup_steps=1,
                    checkpoint_every=1, output_dir=output_dir, progress=False)
    return SFTConfig(**{**settings, **overrides})


def test_resume_refuses_a_different_run(tmp_path):
    trained = train_sft(small_model(), short_run(tmp_path))
    other = build_model(preset_config("tiny", text_config={"num_hidden_layers": 2}, image_sizes=[56, 56]), seed=1)
    with pytest.raises(ValueError, match=r"holds checkpoints of a different run; differing: the starting model .*"
                                         r"new output_dir \(or resume=False with an empty directory\)"):
        train_sft(other, short_run(tmp_path))
    differing = r"differing: batch_size \(4 in the checkpoint, 2 now\); learning_rate \(0.001 in the"
    with pytest.raises(ValueError, match=differing):
        train_sft(small_model(), short_run(tmp_path, learning_rate=2e-3, batch_size=2))
    # how a run is driven or reported may change; the model a run returned continues it
    train_sft(small_model(), short_run(tmp_path, eval_every=1, log_every=1, checkpoint_every=2))
    train_sft(trained, short_run(tmp_path, steps=2))


def test_resume_false_into_a_used_output_dir_raises(tmp_path):
    train_sft(small_model(), short_run(tmp_path))
    before = sorted(p.name for p in list_checkpoints(tmp_path))
    with pytest.raises(ValueError, match=r"is not empty .*pass resume=True"):
        train_sft(small_model(), short_run(tmp_path, resume=False))
    assert sorted(p.name for p in list_checkpoints(tmp_path)) == before == ["step_00000001", "step_00000002"]


def test_non_finite_weights_are_never_saved(tmp_path):
    """Weights poisoned after step 2: its checkpoint is not written, the error names step 1's, which is finite."""
    def poison_at_step_2(model):
        if poison_at_step_2.calls == 1:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        poison_at_step_2.calls += 1
        return {}

    poison_at_step_2.calls = 0
    with pytest.raises(FloatingPointError, match=r"non-finite values at step 2, so no checkpoint was written; the "
                                                 r"last good checkpoint is .*step_00000001"):
        train_sft(small_model(), short_run(tmp_path, steps=3, eval_fn=poison_at_step_2, eval_every=1))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001"]
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "step_00000001" / "model.safetensors").values())


@pytest.mark.parametrize("overrides", [dict(learning_rate=float("inf")), dict(max_grad_norm=float("nan"))])
def test_bad_lr_or_clip_with_validation_bypassed_saves_nothing(tmp_path, monkeypatch, overrides):
    monkeypatch.setattr(SFTConfig, "validate", lambda self: None)
    with pytest.raises(FloatingPointError, match="non-finite"):
        train_sft(small_model(), short_run(tmp_path, **overrides))
    assert list_checkpoints(tmp_path) == [] and not list(tmp_path.glob(".tmp_step_*"))


def test_resident_demos_build_the_same_batches_as_make_batch():
    from vla_compress.data import ResidentDemos
    from vla_compress.recovery.sft import make_batch

    model = small_model()
    samples = synthetic_samples(12, seed=3)
    samples[0]["instruction"] = "put the red cube on the plate now please"  # longer prompt: global padding
    stats = {"d": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]}}}
    model.config.norm_stats = stats
    resident = ResidentDemos(samples, model.processor, stats)
    indices = np.array([5, 1, 7, 7])
    for augment in (False, True):
        expected = make_batch(model, [samples[i] for i in indices], rng=np.random.default_rng(9) if augment else None)
        got = resident.make_batch(model, indices, np.random.default_rng(9) if augment else None)
        torch.testing.assert_close(got["pixel_values"], expected["pixel_values"])
        with torch.no_grad():
            torch.testing.assert_close(model.action_loss(**got), model.action_loss(**expected))
        assert torch.equal(got["input_ids"][:, -7:], expected["input_ids"][:, -7:])


def test_sft_trains_from_resident_demos(tmp_path):
    from vla_compress.data import ResidentDemos

    model = small_model()
    held_out = synthetic_samples(16, seed=1)
    before = held_out_metrics(model, held_out)["eval/action_loss"]
    data = ResidentDemos(synthetic_samples(64, seed=0), model.processor, None)
    model = train_sft(model, SFTConfig(data=data, steps=12, batch_size=8, learning_rate=1e-3, warmup_steps=2,
                                       progress=False))
    assert held_out_metrics(model, held_out)["eval/action_loss"] < 0.5 * before


def test_shift_images_is_an_edge_padded_random_crop():
    from vla_compress.modeling.processing import shift_images

    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    got = shift_images(torch.from_numpy(images), np.random.default_rng(4)).numpy()
    pad = 1  # round(0.06 * 16)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = np.random.default_rng(4).integers(0, 2 * pad + 1, size=(3, 2))
    expected = np.stack([padded[i, dy:dy + 16, dx:dx + 16] for i, (dy, dx) in enumerate(offsets)])
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    given = shift_images(torch.from_numpy(images), None, offsets=offsets).numpy()  # no generator needed
    assert np.array_equal(given, expected)
    with pytest.raises(ValueError, match="rng or offsets"):
        shift_images(torch.from_numpy(images), None)


def test_resident_demos_rejects_empty_samples():
    from vla_compress.data import ResidentDemos

    with pytest.raises(ValueError, match="samples is empty"):
        ResidentDemos([], small_model().processor, None)


def test_lr_is_a_deprecated_alias_of_learning_rate():
    with pytest.warns(DeprecationWarning, match="learning_rate"):
        config = SFTConfig(data=synthetic_samples(2, 0), lr=3e-4)
    assert config.learning_rate == 3e-4 and config.lr is None
