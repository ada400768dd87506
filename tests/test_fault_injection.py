"""Fault injection: kill -9 at seeded points of SFT and PPO runs, then resume to the uninterrupted result;
damage each file of a checkpoint in turn: a resume falls back to the previous checkpoint (with a warning)
and ends where an undamaged run ends, or stops with a clear error; never a silent wrong result."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_ppo import tiny_config
from test_sft import small_model, synthetic_samples

from vla_compress import load_vla
from vla_compress.recovery.checkpoint import MANIFEST, decode_state, list_checkpoints
from vla_compress.recovery.ppo import train_ppo
from vla_compress.recovery.sft import SFTConfig, train_sft
from vla_compress.recovery.value_head import VALUE_HEAD_FILE

TESTS = Path(__file__).parent
SEED = 0  # draws the kill points


pytestmark = pytest.mark.usefixtures("one_thread")


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """Bit-identical tensors (weights, value head, optimizer moments, RNG) and the same trainer-state JSON."""
    assert a.name == b.name
    for name in ("model.safetensors", "trainer_state.safetensors", VALUE_HEAD_FILE):
        if (a / name).exists() or (b / name).exists():
            left, right = load_file(a / name), load_file(b / name)
            assert left.keys() == right.keys(), name
            for key in left:
                assert torch.equal(left[key], right[key]), f"{name}: {key}"
    assert trainer_state(a) == trainer_state(b)


class TensorNames(dict):
    def __missing__(self, name: str) -> str:
        return name


def trainer_state(checkpoint: Path) -> dict:
    """The saved trainer state with tensors as their names (compared above), without Python's `random` state:
    training never seeds or draws from it, and every (forked) process starts with a fresh one."""
    state = decode_state(json.loads((checkpoint / "trainer_state.json").read_text())["state"], TensorNames())
    del state["rng"]["python"]
    return state


def kill_and_resume(tmp_path: Path, mode: str, kills: list[list]) -> None:
    command = [sys.executable, str(TESTS / "scripts" / "fault_worker.py"), mode, str(tmp_path), str(TESTS),
               json.dumps(kills)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["reference"] == 0, result.stderr[-3000:]
    *killed, last = report["attempts"]
    assert [a["status"] for a in killed] == [-9] * len(kills), report  # every kill point was reached
    assert last["status"] == 0, result.stderr[-3000:]
    assert any(e.startswith(".tmp_step_") for e in killed[0]["entries"]), "the first kill left no half-written save"
    assert not any(e.startswith(".tmp_step_") for e in last["entries"]), "stale temporary directories remain"
    run, reference = list_checkpoints(tmp_path / "run"), list_checkpoints(tmp_path / "reference")
    assert [p.name for p in run] == [p.name for p in reference]
    assert_same_checkpoint(run[-1], reference[-1])


def test_sft_killed_at_seeded_points_resumes_to_the_uninterrupted_result(tmp_path):
    """Four kills: mid-save (before the rename), between a step and its save, right after a rename, in the
    second save of an attempt. A checkpoint write makes 10 fsyncs (7 files, the manifest, the directory,
    then the parent after the rename)."""
    rng = random.Random(SEED)
    kills = [["fsync", rng.randint(1, 9)], ["step", rng.randint(1, 2)], ["replace", rng.randint(1, 3)],
             ["fsync", rng.randint(11, 20)]]
    kill_and_resume(tmp_path, "sft", kills)


def test_ppo_killed_at_seeded_points_resumes_to_the_uninterrupted_result(tmp_path):
    """On the fake env of test_ppo; a PPO checkpoint write makes 11 fsyncs (the value head is one more file)."""
    rng = random.Random(SEED + 1)
    kills = [["fsync", rng.randint(1, 10)], ["step", rng.randint(1, 2)], ["fsync", rng.randint(12, 22)]]
    kill_and_resume(tmp_path, "ppo", kills)


# ---- damaged checkpoints -------------------------------------------------------------------------------------
def sft_config(output_dir: Path) -> SFTConfig:
    return SFTConfig(data=synthetic_samples(16, seed=0), steps=2, batch_size=4, learning_rate=1e-3, warmup_steps=1,
                     checkpoint_every=1, output_dir=output_dir, progress=False)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """An SFT run with checkpoints after steps 1 and 2."""
    output_dir = tmp_path_factory.mktemp("pristine") / "run"
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        train_sft(small_model(), sft_config(output_dir))
    return output_dir


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # flip one bit in the middle: same size, parses as before for most formats
        data[len(data) // 2] ^= 0x01
        path.write_bytes(data)


FILES = ["config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
         "trainer_state.json", "trainer_state.safetensors", MANIFEST]


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("name", FILES)
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(pristine, tmp_path, name, how):
    output_dir = tmp_path / "run"
    shutil.copytree(pristine, output_dir)
    damage(output_dir / "step_00000002" / name, how)
    with pytest.warns(UserWarning, match=r"resuming from .*step_00000001: skipped damaged step_00000002"):
        model = train_sft(small_model(), sft_config(output_dir))
    assert_same_checkpoint(output_dir / "step_00000002", pristine / "step_00000002")  # step 2 redone
    reference = load_file(pristine / "step_00000002" / "model.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_every_checkpoint_damaged_is_a_clear_error(pristine, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(pristine, output_dir)
    damage(output_dir / "step_00000002" / "model.safetensors", "flip")
    damage(output_dir / "step_00000001" / "trainer_state.safetensors", "truncate")
    with pytest.raises(ValueError, match=r"no intact checkpoint in .*step_00000002 \(model.safetensors does not "
                                         r"match its sha256.*step_00000001 \(trainer_state.safetensors has .*bytes"):
        train_sft(small_model(), sft_config(output_dir))


def test_ppo_damaged_value_head_falls_back(tmp_path):
    train_ppo(load_vla("tiny"), tiny_config(tmp_path, "reference", updates=2))
    train_ppo(load_vla("tiny"), tiny_config(tmp_path, "run", updates=2))
    damage(tmp_path / "run" / "step_00000016" / VALUE_HEAD_FILE, "truncate")
    with pytest.warns(UserWarning, match="resuming from .*step_00000008"):
        train_ppo(load_vla("tiny"), tiny_config(tmp_path, "run", updates=2, resume=True))
    assert_same_checkpoint(tmp_path / "run" / "step_00000016", tmp_path / "reference" / "step_00000016")
