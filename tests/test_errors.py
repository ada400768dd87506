"""Every public entry point refuses bad input up front with a clear exception naming the argument.

One place that walks the whole public surface (per-module tests go deeper); see docs/errors.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from vla_compress import PPOConfig, SFTConfig, component_sizes, load_vla, prune, quantize, recover
from vla_compress.data import DemoDataset, generate_demos
from vla_compress.data.libero_hdf5 import LiberoDataset
from vla_compress.envs import make_env
from vla_compress.evaluation import evaluate, profile
from vla_compress.modeling import build_model, preset_config


@pytest.fixture(scope="module")
def model():
    return build_model(preset_config("tiny", text_config={"num_hidden_layers": 3}))


def sample() -> dict:
    return {"image": np.zeros((32, 32, 3), np.uint8), "instruction": "put the red cube on the blue plate",
            "action": np.zeros(7, np.float32)}


CASES = {
    "load_vla unknown preset": (lambda m: load_vla("not-a-preset"), ValueError, "preset"),
    "load_vla bad dtype": (lambda m: load_vla("tiny", dtype="float7"), ValueError, "dtype"),
    "predict_action wrong channels": (
        lambda m: m.predict_action(np.zeros((1, 8, 8, 4), np.uint8), ["x"]), ValueError, "images"),
    "predict_action float images": (
        lambda m: m.predict_action(np.zeros((1, 8, 8, 3), np.float32), ["x"]), ValueError, "uint8"),
    "predict_action length mismatch": (
        lambda m: m.predict_action(np.zeros((2, 8, 8, 3), np.uint8), ["x"]), ValueError, "instructions"),
    "predict_action instructions not a list": (
        lambda m: m.predict_action(np.zeros((2, 8, 8, 3), np.uint8), "x"), ValueError, "instructions"),
    "predict_action empty batch": (
        lambda m: m.predict_action(np.zeros((0, 8, 8, 3), np.uint8), []), ValueError, "images is an empty batch"),
    "processor instructions one string": (
        lambda m: m.processor(np.zeros((1, 8, 8, 3), np.uint8), "x"), ValueError, "not one string"),
    "load_vla unknown device": (lambda m: load_vla("tiny", device="gpu0"), ValueError, "device='gpu0' is unknown"),
    "load_vla absent device": (lambda m: load_vla("tiny", device="cuda:99"), ValueError, "device='cuda:99'"),
    "prune ratio out of range": (lambda m: prune(m, ratio=1.5, importance="l2"), ValueError, "ratio"),
    "prune wrong ratio type": (lambda m: prune(m, ratio="half", importance="l2"), ValueError, "ratio"),
    "prune unknown importance": (lambda m: prune(m, ratio=0.5, importance="psychic"), ValueError, "importance"),
    "prune unknown method": (lambda m: prune(m, ratio=0.5, method="chainsaw"), ValueError, "method"),
    "prune taylor without calibration": (lambda m: prune(m, ratio=0.5, importance="taylor"), ValueError,
                                         "calibration"),
    "quantize bits": (lambda m: quantize(m, bits=3), ValueError, "bits"),
    "quantize method": (lambda m: quantize(m, bits=4, method="zip"), ValueError, "method"),
    "recover nothing to do": (lambda m: recover(m), ValueError, "sft"),
    "recover wrong config type": (lambda m: recover(m, sft={"steps": 3}), ValueError, "SFTConfig"),
    "recover empty dataset": (lambda m: recover(m, sft=SFTConfig(data=[])), ValueError, "empty"),
    "recover negative steps": (lambda m: recover(m, sft=SFTConfig(data=[sample()], steps=-1)), ValueError,
                               "steps"),
    "recover infinite lr": (lambda m: recover(m, sft=SFTConfig(data=[sample()], learning_rate=float("inf"))),
                            ValueError, "SFTConfig.learning_rate"),
    "recover fractional steps": (lambda m: recover(m, sft=SFTConfig(data=[sample()], steps=2.5)), ValueError,
                                 "SFTConfig.steps"),
    "recover ppo nan max_grad_norm": (
        lambda m: recover(m, rl=PPOConfig(max_grad_norm=float("nan"), output_dir="/tmp/x")), ValueError,
        "max_grad_norm"),
    "recover ppo batch larger than buffer": (
        lambda m: recover(m, rl=PPOConfig(num_envs=2, episode_steps=4, minibatch_size=64)), ValueError,
        "minibatch_size"),
    "recover ppo unknown env": (lambda m: recover(m, rl=PPOConfig(env="atari", output_dir="/tmp/x")), ValueError,
                                "env"),
    "recover ppo reward mode": (lambda m: recover(m, rl=PPOConfig(reward_mode="shaped", output_dir="/tmp/x")),
                                ValueError, "reward_mode"),
    "recover ppo frozen decode": (lambda m: recover(m, rl=PPOConfig(decode="frozen", output_dir="/tmp/x")),
                                  ValueError, "decode='frozen'"),
    "make_env unknown suite": (lambda m: make_env(suite="mujoco-soccer"), ValueError, "suite"),
    "make_env unknown task": (lambda m: make_env(tasks=["pink_cube_on_gold_plate"]), ValueError, "task"),
    "make_env num_envs": (lambda m: make_env(num_envs=0), ValueError, "num_envs"),
    "generate_demos episodes": (lambda m: generate_demos("/tmp/never", episodes_per_task=0), ValueError,
                                "episodes_per_task"),
    "DemoDataset missing path": (lambda m: DemoDataset("/nonexistent/demos"), ValueError, "nonexistent"),
    "LiberoDataset missing path": (lambda m: LiberoDataset("/nonexistent/libero"), ValueError, "nonexistent"),
    "evaluate not a policy": (lambda m: evaluate(object(), tasks=["red_cube_on_red_plate"]), ValueError, "policy"),
    "evaluate episodes": (lambda m: evaluate(m, episodes_per_task=0), ValueError, "episodes_per_task"),
    "evaluate unknown decode": (lambda m: evaluate(m, decode="jit"), ValueError, "decode='jit' is unknown"),
    "evaluate decode of a callable": (lambda m: evaluate(lambda images, instructions, unnorm_key: None,
                                                         decode="static"), ValueError, "decode='static' needs"),
    "profile batch size": (lambda m: profile(m, batch_size=0), ValueError, "batch_size"),
    "profile not a model": (lambda m: profile(object()), ValueError, "predict_action"),
    "component_sizes not a model": (lambda m: component_sizes(object()), ValueError, "OpenVLAForActionPrediction"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_public_entry_point_rejects_bad_input(model, case):
    call, error, match = CASES[case]
    with pytest.raises(error, match=match):
        call(model)


def test_corrupted_and_incomplete_checkpoints(model, tmp_path):
    model.save_pretrained(tmp_path / "ok")
    assert component_sizes(load_vla(tmp_path / "ok"))["total"].params == component_sizes(model)["total"].params
    corrupted = tmp_path / "corrupted"
    model.save_pretrained(corrupted)
    (corrupted / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupted"):
        load_vla(corrupted)
    (corrupted / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="missing"):
        load_vla(corrupted)
    (corrupted / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_vla(corrupted)
