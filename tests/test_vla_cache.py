"""VLA-Cache (`VLACachePolicy`): reuse off and identical frames give the model's actions, the cache is really
reused, resets per episode (also from `evaluate`), pruned and quantized models, `profile` on an episode, and
bad settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from vla_compress import VLACacheConfig, VLACachePolicy, component_sizes, load_vla
from vla_compress.evaluation import evaluate, profile
from vla_compress.modeling.vla_cache import layer_reuse_schedule
from vla_compress.pruning import prune
from vla_compress.quantization import quantize

pytestmark = pytest.mark.usefixtures("one_thread")

INSTRUCTIONS = ["put the red cube on the blue plate", "lift the cube"]  # different lengths: mid-padded
# Every visual token reused at every layer: the LM sees exactly the previous step's visual keys and values.
ALL_REUSED = {"static_top_k": 64, "similarity_threshold": 0.0, "task_top_k": 0, "reuse_layers": (0,),
              "reuse_fraction": 1.0}


def tiny() -> nn.Module:
    """The tiny preset (64 visual tokens, 6 layers) with a sharper head, so actions differ across inputs."""
    model = load_vla("tiny", seed=0).eval()
    with torch.no_grad():
        model.language_model.lm_head.weight.mul_(40.0)
    return model


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny()


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Two different pairs of frames `[2, 2, 112, 112, 3]`: frames[0] then frames[1]."""
    return np.random.default_rng(0).integers(0, 256, (2, 2, 112, 112, 3), dtype=np.uint8)


def test_reuse_off_gives_the_models_actions(model, frames):
    for policy in (VLACachePolicy(model, enabled=False), VLACachePolicy(model, static_top_k=0),
                   VLACachePolicy(model, reuse_fraction=0.0)):
        for images in frames:
            np.testing.assert_array_equal(policy.predict_action(images, INSTRUCTIONS),
                                          model.predict_action(images, INSTRUCTIONS))
            assert not any(policy.last_step["reused_tokens_per_layer"])


@pytest.mark.parametrize("settings", [{}, ALL_REUSED], ids=["defaults", "all_reused"])
def test_repeated_frame_cached_steps_match_full_computation(model, frames, settings):
    policy = VLACachePolicy(model, **settings)
    expected = model.predict_action(frames[0], INSTRUCTIONS)
    reused = []
    for _ in range(3):
        np.testing.assert_array_equal(policy.predict_action(frames[0], INSTRUCTIONS), expected)
        reused.append(policy.last_step["reused_tokens_per_layer"])
    assert not any(reused[0]) and all(any(r) for r in reused[1:])  # the first step computes all, then reuse
    if settings:
        assert reused[1] == [64] * 6
    info = policy.describe()
    assert info["steps"] == 3 and info["rows_with_cache"] == 4 and 0 < info["reused_fraction"] < 1
    assert info["settings"]["reuse_layers"] == ((0,) if settings else (1, 2))  # 2, 6, 9, 11 of 32 for 6 layers
    json.dumps(info)


def test_reused_tokens_are_the_previous_steps(model, frames):
    """With every visual token reused, the next frame acts as the previous one did; a reset forgets it."""
    first, second = (model.predict_action(images, INSTRUCTIONS) for images in frames)
    assert not np.array_equal(first, second)
    policy = VLACachePolicy(model, **ALL_REUSED)
    policy.predict_action(frames[0], INSTRUCTIONS)
    np.testing.assert_array_equal(policy.predict_action(frames[1], INSTRUCTIONS), first)
    policy.reset()
    np.testing.assert_array_equal(policy.predict_action(frames[1], INSTRUCTIONS), second)
    assert policy.last_step["rows_with_cache"] == 0


def test_reset_per_environment_and_on_a_new_instruction(model, frames):
    policy = VLACachePolicy(model, **ALL_REUSED)
    policy.predict_action(frames[0], INSTRUCTIONS)
    policy.reset(env_ids=[1])
    policy.predict_action(frames[0], INSTRUCTIONS)
    # row 0 kept its cache; the batch reuses as many tokens as its row reusing fewest (the fresh row 1: none)
    assert policy.last_step["rows_with_cache"] == 1 and not any(policy.last_step["reused_tokens_per_layer"])
    policy.predict_action(frames[0], INSTRUCTIONS)
    assert policy.last_step["rows_with_cache"] == 2
    policy.predict_action(frames[0], [INSTRUCTIONS[0], "put the green cube on the yellow plate"])
    assert policy.last_step["rows_with_cache"] == 1  # a new instruction is a new episode
    policy.predict_action(frames[0][:1], INSTRUCTIONS[:1])
    assert policy.last_step["rows_with_cache"] == 0  # another batch size: new environments
    with pytest.raises(ValueError, match="env_ids"):
        policy.reset(env_ids=[3])


def test_pruned_and_quantized_models(frames):
    pruned = prune(tiny(), 0.5, importance="l2", layers=[1, 2])
    for compressed in (pruned, quantize(tiny(), 8, "quanto"), quantize(tiny(), 4, "bnb")):
        policy = VLACachePolicy(compressed, **ALL_REUSED)
        expected = compressed.predict_action(frames[0], INSTRUCTIONS)
        for _ in range(2):
            np.testing.assert_array_equal(policy.predict_action(frames[0], INSTRUCTIONS), expected)
        assert policy.last_step["reused_tokens_per_layer"] == [64] * 6


def test_evaluate_resets_the_cache_at_every_episode_start(model):
    class Envs:
        """Two fixed-length rounds of one worker: a still random frame, never a success."""

        num_envs = 1

        def reset(self, seed, options):
            self.image = np.random.default_rng(seed[0]).integers(0, 256, (1, 112, 112, 3), dtype=np.uint8)
            return {"image": self.image}, {"instruction": np.array([INSTRUCTIONS[0]])}

        def step(self, action):
            info = {"instruction": np.array([INSTRUCTIONS[0]]), "success": np.array([False])}
            return {"image": self.image}, np.zeros(1), np.array([False]), np.array([False]), info

    policy = VLACachePolicy(model, **ALL_REUSED)
    result = evaluate(policy, tasks=["red_cube_on_blue_plate", "green_cube_on_yellow_plate"],
                      episodes_per_task=1, envs=Envs(), max_episode_steps=3, progress=False)
    assert len(result.episodes) == 2
    assert policy.describe()["steps"] == 6 and policy.describe()["rows_with_cache"] == 4  # 2 of 3 steps per episode


def test_profile_needs_and_replays_a_recorded_episode(model, frames):
    policy = VLACachePolicy(model)
    with pytest.raises(ValueError, match="episode"):
        profile(policy, batch_size=2, warmup=1, iters=2)
    episode = {"images": np.concatenate([frames[0][:1]] * 3), "instruction": INSTRUCTIONS[0]}
    result = profile(policy, batch_size=2, warmup=1, iters=2, episode=episode)
    assert result.model_bytes == component_sizes(model)["total"].bytes and result.image_size == 112
    assert "episode frames" in result.inputs and "reset" in result.inputs
    info = result.policy_info
    assert info["method"] == "vla-cache" and info["steps"] == 6 and info["rows_with_cache"] == 6
    assert info["reused_fraction"] > 0
    with pytest.raises(ValueError, match=r"episode\[0\]\['images'\]"):
        profile(policy, episode={"images": frames[0][:1], "instruction": "x"})  # one frame is no sequence


def test_layer_schedule_follows_the_authors():
    entropy = torch.tensor([[1.0, 3.0, 0.0, 2.0]])
    # reuse = 1 - (e - min) / (max - min) = [2/3, 0, 1, 1/3]; the rise 0 -> 1 keeps 0.55 of itself
    torch.testing.assert_close(layer_reuse_schedule(entropy), torch.tensor([[2 / 3, 0.0, 0.55, 1 / 3]]))
    torch.testing.assert_close(layer_reuse_schedule(entropy, growth_factor=1.0), torch.tensor([[2 / 3, 0, 1, 1 / 3]]))


@pytest.mark.parametrize("settings, name", [
    ({"reuse_fraction": 1.5}, "reuse_fraction"), ({"reuse_fraction": -0.1}, "reuse_fraction"),
    ({"similarity_threshold": 1.2}, "similarity_threshold"), ({"growth_factor": -1.0}, "growth_factor"),
    ({"static_top_k": -1}, "static_top_k"), ({"task_top_k": -5}, "task_top_k"), ({"static_top_k": 2.5}, "static_top_k"),
    ({"attention_layer": -1}, "attention_layer"), ({"reuse_layers": (1, -2)}, "reuse_layers"),
])
def test_bad_settings_raise_naming_the_argument(settings, name):
    with pytest.raises(ValueError, match=name):
        VLACacheConfig(**settings)


def test_bad_settings_for_the_model_raise_before_any_work(model, frames):
    for settings, name in (({"reuse_layers": (1, 6)}, "reuse_layers"), ({"attention_layer": 6}, "attention_layer"),
                           ({"reuse_fraction": 2}, "reuse_fraction")):
        with pytest.raises(ValueError, match=name):
            VLACachePolicy(model, **settings)
    with pytest.raises(ValueError, match="decode"):
        VLACachePolicy(model).predict_action(frames[0], INSTRUCTIONS, decode="static")
