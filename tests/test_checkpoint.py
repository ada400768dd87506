"""Training checkpoints: nothing is unpickled, the trainer state round-trips exactly, writes are flushed
before the rename and verified on resume, stale temporary directories go, non-finite weights are never saved."""

from __future__ import annotations

import math
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_sft import small_model, synthetic_samples

from vla_compress.recovery import checkpoint
from vla_compress.recovery.checkpoint import (
    MANIFEST,
    check_output_dir,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    save_checkpoint,
)
from vla_compress.recovery.sft import SFTConfig, train_sft, warmup_cosine


class Stub(torch.nn.Linear):
    """A module with the `save_pretrained` a checkpoint needs."""

    def __init__(self) -> None:
        super().__init__(3, 2)

    def save_pretrained(self, directory: Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), str(Path(directory) / "model.safetensors"))


def trained_stub() -> tuple[Stub, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    model = Stub()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(2, 10, 0.1))
    for _ in range(2):
        model(torch.randn(4, 3)).square().sum().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def assert_identical(a, b, where: str = "state") -> None:
    """Equal values of the same types all the way down (int keys stay ints, tuples stay tuples)."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}/{key!r}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}/{i}")
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), where


def test_trainer_state_round_trips_exactly_and_restores_the_rng(tmp_path):
    model, optimizer, scheduler = trained_stub()
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "extra": {"nested": (1, 2.5, None, "a", True, float("nan")), 7: [torch.arange(3)], "empty": {}}}
    saved = save_checkpoint(tmp_path, 2, model, state)
    assert sorted(os.listdir(saved)) == [MANIFEST, "model.safetensors", "trainer_state.json",
                                         "trainer_state.safetensors"]
    after_save = (random.random(), np.random.rand(), torch.rand(2))

    loaded = load_trainer_state(saved)
    assert (random.random(), np.random.rand()) == after_save[:2] and torch.equal(torch.rand(2), after_save[2])
    assert loaded["step"] == 2
    for key in state:
        assert_identical(state[key], loaded[key], key)
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.9)
    assert list(loaded["optimizer"]["state"]) == [0, 1]  # parameter indices come back as ints
    fresh = Stub()
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-3, betas=(0.8, 0.9))
    fresh_optimizer.load_state_dict(loaded["optimizer"])
    assert_identical(optimizer.state_dict(), fresh_optimizer.state_dict(), "reloaded optimizer")


class Payload:
    """A pickle that creates `marker` when it is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_resume_never_unpickles_an_old_trainer_state_pt(tmp_path):
    output_dir = tmp_path / "run"
    old = output_dir / "step_00000001"
    old.mkdir(parents=True)
    marker = tmp_path / "payload_ran"
    (old / "trainer_state.pt").write_bytes(pickle.dumps(Payload(marker)))
    small_model().save_pretrained(old)

    config = SFTConfig(data=synthetic_samples(4, 0), steps=2, batch_size=2, output_dir=output_dir, progress=False)
    with pytest.raises(ValueError, match=r"old unsafe checkpoint format .* new output_dir"):
        train_sft(small_model(), config)
    with pytest.raises(ValueError, match="old unsafe checkpoint format"):
        load_trainer_state(old)
    assert not marker.exists()
    pickle.loads((old / "trainer_state.pt").read_bytes())  # the payload is live: unpickling runs it
    assert marker.exists()


def test_writes_are_flushed_before_the_rename_and_the_manifest_is_last(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = checkpoint._fsync, os.replace
    monkeypatch.setattr(checkpoint, "_fsync", lambda path: events.append(("fsync", Path(path).name))
                        or real_fsync(path))
    monkeypatch.setattr(checkpoint.os, "replace", lambda src, dst: events.append(("replace", Path(dst).name))
                        or real_replace(src, dst))
    model, optimizer, _ = trained_stub()
    final = save_checkpoint(tmp_path / "run", 1, model, {"optimizer": optimizer.state_dict()})
    rename = events.index(("replace", final.name))
    before = {name for kind, name in events[:rename] if kind == "fsync"}
    assert set(os.listdir(final)) <= before  # every file...
    assert [name for _, name in events[rename - 2:rename]] == [MANIFEST, f".tmp_step_00000001_{os.getpid()}"]
    assert events[rename + 1] == ("fsync", "run")  # ...the directory, then the parent after the rename


def test_stale_temporary_directories_are_removed_on_save_and_resume(tmp_path):
    model, optimizer, _ = trained_stub()
    stale = tmp_path / ".tmp_step_00000003_99999"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    save_checkpoint(tmp_path, 1, model, {})
    assert not stale.exists()
    stale.mkdir()
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    assert not stale.exists()


def test_save_refuses_non_finite_weights_and_writes_nothing(tmp_path):
    model, _, _ = trained_stub()
    save_checkpoint(tmp_path, 1, model, {})
    with torch.no_grad():
        model.bias[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"bias holds non-finite values at step 2, so no checkpoint was "
                                                 r"written; the last good checkpoint is .*step_00000001"):
        save_checkpoint(tmp_path, 2, model, {})
    assert sorted(os.listdir(tmp_path)) == ["step_00000001"]


def test_rotation_keeps_the_newest_and_drops_later_damaged_ones(tmp_path):
    model, _, _ = trained_stub()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model, {})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    (tmp_path / "step_00000004" / "model.safetensors").write_bytes(b"damaged")
    with pytest.warns(UserWarning, match=r"resuming from .*step_00000003: skipped damaged step_00000004 "
                                         r"\(model.safetensors has 7 bytes"):
        assert latest_checkpoint(tmp_path).name == "step_00000003"
    save_checkpoint(tmp_path, 3, model, {})  # the resumed run saves again: the damaged later one goes
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003"]


def test_output_dir_checks(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        check_output_dir(tmp_path / "file", resume=True)
    check_output_dir(tmp_path / "new", resume=False)
    (tmp_path / "used").mkdir()
    check_output_dir(tmp_path / "used", resume=False)  # empty: fine
    (tmp_path / "used" / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"output_dir .*used is not empty \(it holds metrics.jsonl\); pass "
                                         "resume=True"):
        check_output_dir(tmp_path / "used", resume=False)
    check_output_dir(tmp_path / "used", resume=True)
