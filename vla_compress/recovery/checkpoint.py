"""Atomic, verified, resumable training checkpoints (model, optimizer, scheduler, RNG, step).

A checkpoint is one directory `step_{N}/`: the model's `save_pretrained` output, the trainer state as
`trainer_state.safetensors` (its tensors) plus `trainer_state.json` (everything else: nothing in a
checkpoint is unpickled, so loading one never runs code), and `manifest.json`, written last, with the
size and sha256 of every file. It is written to a temporary sibling, fsynced and renamed into place.
`latest_checkpoint` returns the newest checkpoint whose files match its manifest; a damaged newer one
is skipped with a warning.

A training run records what it is (`run_identity`: its starting model's fingerprint and its settings)
in every checkpoint, and `load_trainer_state(checkpoint, run)` refuses to resume a different run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
MANIFEST = "manifest.json"
LEGACY_STATE = "trainer_state.pt"  # the old pickle format: recognised, never loaded
FORMAT = 1
TMP_PREFIX = ".tmp_step_"
START_FRESH = "To start fresh, pass a new output_dir (or resume=False with an empty directory)."


# ---- trainer state as tensors + JSON ---------------------------------------------------------------------
def encode_state(obj: Any, tensors: dict[str, torch.Tensor], path: str = "state") -> Any:
    """`obj` (nested dict/list/tuple of int/float/str/bool/None/tensor) as JSON data; its tensors are
    moved to `tensors` under unique names and referenced as `{"tensor": name}`. Tuples are
    `{"tuple": [...]}` and dicts `{"dict": [[key, value], ...]}`, so int keys and tuples come back as such."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        name = path if path not in tensors else f"{path}#{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous()
        return {"tensor": name}
    if isinstance(obj, (list, tuple)):
        items = [encode_state(value, tensors, f"{path}/{i}") for i, value in enumerate(obj)]
        return items if isinstance(obj, list) else {"tuple": items}
    if isinstance(obj, dict):
        bad = [key for key in obj if not (key is None or isinstance(key, (bool, int, float, str)))]
        if bad:
            raise TypeError(f"trainer state at {path} has a key {bad[0]!r}; allowed: str, int, float, bool, None")
        return {"dict": [[key, encode_state(value, tensors, f"{path}/{key}")] for key, value in obj.items()]}
    raise TypeError(f"trainer state at {path} is a {type(obj).__name__}; allowed: dict, list, tuple, int, float, "
                    "str, bool, None, torch.Tensor")


def decode_state(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `encode_state`."""
    if isinstance(node, list):
        return [decode_state(value, tensors) for value in node]
    if isinstance(node, dict):
        (tag, value), = node.items()
        if tag == "tensor":
            return tensors[value]
        if tag == "tuple":
            return tuple(decode_state(item, tensors) for item in value)
        if tag == "dict":
            return {key: decode_state(item, tensors) for key, item in value}
        raise ValueError(f"unknown tag {tag!r} in the trainer state")
    return node


def rng_state() -> dict[str, Any]:
    """Python's, numpy's and torch's global RNG states as plain values and tensors."""
    numpy = np.random.get_state(legacy=False)
    numpy["state"]["key"] = torch.from_numpy(numpy["state"]["key"].astype(np.int64))
    return {"python": random.getstate(), "numpy": numpy, "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state({**numpy, "state": {**numpy["state"], "key": numpy["state"]["key"].numpy().astype(np.uint32)}})
    torch.set_rng_state(state["torch"])


def _legacy_error(checkpoint: Path) -> ValueError:
    return ValueError(f"{checkpoint} holds {LEGACY_STATE}, the old unsafe checkpoint format (a pickle, which can "
                      f"run code when loaded), so it is not loaded. {START_FRESH}")


def load_trainer_state(checkpoint: str | Path, run: dict[str, Any] | None = None) -> dict[str, Any]:
    """The saved optimizer/scheduler/step state; restores the RNG as a side effect.

    With `run` (from `run_identity`), a checkpoint of a different run raises ValueError naming what differs."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / STATE_JSON).exists() and (checkpoint / LEGACY_STATE).exists():
        raise _legacy_error(checkpoint)
    try:
        document = json.loads((checkpoint / STATE_JSON).read_text())
        state = decode_state(document["state"], load_file(str(checkpoint / STATE_TENSORS)))
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{checkpoint}: the trainer state is missing or damaged ({error}). {START_FRESH}") from error
    if run is not None:
        check_same_run(checkpoint, state, run)
    set_rng_state(state["rng"])
    return state


# ---- what a run is -----------------------------------------------------------------------------------------
# what saving or loading a model adds to its config (the tensors' dtypes are hashed with the tensors)
CONFIG_BOOKKEEPING = ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype")


def _model_settings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _model_settings(v) for k, v in value.items() if k not in CONFIG_BOOKKEEPING}
    return value


def model_fingerprint(model: torch.nn.Module, samples: int = 1024) -> str:
    """sha256 of the model's config and a strided sample of every tensor's bytes (milliseconds, even at 7B)."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(json.dumps(_model_settings(config.to_dict()), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        flat = flat[::max(1, flat.numel() // samples)][:samples].contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat.cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _describe(value: Any) -> Any:
    """A config value as comparable JSON: plain values as they are, callables by name, datasets by size."""
    if isinstance(value, Path):
        return str(value)
    if callable(value):
        function = getattr(value, "func", value)  # functools.partial
        return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', type(function).__name__)}"
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        size = f" of {len(value)} items" if hasattr(value, "__len__") else ""
        return f"{type(value).__name__}{size}"


def run_identity(model: torch.nn.Module, config: Any) -> dict[str, Any]:
    """What a run is: its starting model's fingerprint and the fields of `config` (a dataclass), except the
    ones listed in its `RESUME_MAY_CHANGE` (how the run is driven or reported, not what it trains)."""
    ignored = set(getattr(config, "RESUME_MAY_CHANGE", ()))
    settings = {f.name: _describe(getattr(config, f.name)) for f in fields(config) if f.name not in ignored}
    return {"model": model_fingerprint(model), "config": settings}


def run_state(run: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """The trainer-state entries that tie a checkpoint to its run: the identity and the saved weights'
    fingerprint (so the model a run returned can be passed back to continue it)."""
    return {"run": run, "weights": model_fingerprint(model)}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_same_run(checkpoint: Path, state: dict[str, Any], run: dict[str, Any]) -> None:
    """ValueError naming the differing fields when `checkpoint` was written by another run than `run`."""
    saved = state.get("run")
    if not isinstance(saved, dict):
        raise ValueError(f"{checkpoint} records no run identity (written by another program); {START_FRESH}")
    differences = []
    if run["model"] not in (saved.get("model"), state.get("weights")):
        differences.append("the starting model (its weights or config differ)")
    missing = object()
    saved_config, config = saved.get("config", {}), run["config"]
    for name in sorted(set(saved_config) | set(config)):
        before, now = saved_config.get(name, missing), config.get(name, missing)
        if before != now:
            differences.append(f"{name} ({'absent' if before is missing else _short(before)} in the checkpoint, "
                               f"{'absent' if now is missing else _short(now)} now)")
    if differences:
        raise ValueError(f"{checkpoint.parent} holds checkpoints of a different run; differing: "
                         f"{'; '.join(differences)}. {START_FRESH} To continue that run, pass the same model "
                         "and settings.")


def check_output_dir(output_dir: str | Path, resume: bool) -> None:
    """Refuse an `output_dir` that is a file, or, without `resume`, one that is not empty: a new run never
    mixes its checkpoints with an older run's (both training stages use this)."""
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"output_dir exists and is not a directory: {path}")
    entries = [] if resume or not path.is_dir() else sorted(p.name for p in path.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ValueError(f"output_dir {path} is not empty (it holds {shown}); pass resume=True to continue the "
                         "run in it, or a new (or empty) output_dir to start fresh")


# ---- writing -----------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk."""
    if path.is_dir() and os.name != "posix":
        return  # directories cannot be opened for fsync there
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_manifest(directory: Path) -> None:
    """fsync every file of `directory`, then write `manifest.json` with their sizes and sha256 (last)."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        _fsync(path)
        files[path.relative_to(directory).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = directory / MANIFEST
    manifest.write_text(json.dumps({"format": FORMAT, "files": files}, indent=1))
    _fsync(manifest)
    _fsync(directory)


def _write_trainer_state(directory: Path, state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    document = {"format": FORMAT, "state": encode_state(state, tensors)}
    storages: set[int] = set()
    for name, tensor in tensors.items():  # safetensors refuses tensors that share memory
        storage = tensor.untyped_storage().data_ptr()
        if tensor.numel() and storage in storages:
            tensors[name] = tensor.clone()
        storages.add(storage)
    save_file(tensors, str(directory / STATE_TENSORS))
    (directory / STATE_JSON).write_text(json.dumps(document))


def last_good_checkpoint_note(output_dir: str | Path | None) -> str:
    """'the last good checkpoint is ...' for error messages (checkpoints never hold non-finite values)."""
    if output_dir is None:
        return "no output_dir is set, so nothing was saved"
    checkpoints = list_checkpoints(output_dir)
    return f"the last good checkpoint is {checkpoints[-1]}" if checkpoints else f"no checkpoint in {output_dir} yet"


def _check_finite(model: torch.nn.Module, output_dir: Path, step: int) -> None:
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise FloatingPointError(f"{name} holds non-finite values at step {step}, so no checkpoint was written; "
                                     f"{last_good_checkpoint_note(output_dir)} (lower the learning rate)")


def _remove_stale_tmp(output_dir: Path) -> None:
    """Remove what interrupted saves left behind."""
    for tmp in output_dir.glob(TMP_PREFIX + "*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _discard(checkpoint: Path) -> None:
    """Remove a checkpoint: renamed away first, so an interrupted removal never leaves half of one."""
    trash = checkpoint.with_name(f"{TMP_PREFIX}{checkpoint.name}_{os.getpid()}.old")
    os.replace(checkpoint, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint(output_dir: str | Path, step: int, model, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `output_dir/step_{step}` atomically; keep the newest `keep` checkpoints (0: all).

    Raises FloatingPointError, writing nothing, when the model holds non-finite values. Checkpoints
    numbered after `step` (damaged ones a resume skipped) are removed."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _check_finite(model, output_dir, step)
    _remove_stale_tmp(output_dir)
    final = output_dir / f"step_{step:08d}"
    tmp = output_dir / f"{TMP_PREFIX}{step:08d}_{os.getpid()}"
    model.save_pretrained(tmp)
    _write_trainer_state(tmp, {**state, "step": step, "rng": rng_state()})
    _write_manifest(tmp)
    if final.exists():
        _discard(final)
    os.replace(tmp, final)
    _fsync(output_dir)
    for old in _superseded(output_dir, step, keep):
        _discard(old)
    return final


def _superseded(output_dir: Path, step: int, keep: int) -> list[Path]:
    """Checkpoints after `step` (damaged ones a resume skipped) and, with `keep` > 0, all but the newest `keep`."""
    later = [p for p in _step_dirs(output_dir) if _step_of(p) > step]
    kept = [p for p in _step_dirs(output_dir) if _step_of(p) <= step]
    return later + (kept[:-keep] if keep > 0 else [])


# ---- reading -----------------------------------------------------------------------------------------------
def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def _step_dirs(output_dir: Path) -> list[Path]:
    """Every `step_N` directory, complete or not, by step."""
    if not output_dir.is_dir():
        return []
    return sorted((p for p in output_dir.glob("step_*") if p.is_dir() and p.name[5:].isdigit()), key=_step_of)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoints with a manifest (complete when written; `checkpoint_problem` verifies them), oldest first."""
    return [p for p in _step_dirs(Path(output_dir)) if (p / MANIFEST).exists()]


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be trusted (a file missing, truncated or changed since it was written), or None."""
    try:
        files = json.loads((checkpoint / MANIFEST).read_text())["files"]
        for required in (STATE_JSON, STATE_TENSORS):
            if required not in files:
                return f"{MANIFEST} does not list {required}"
        for name, entry in files.items():
            path = checkpoint / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                return f"{MANIFEST} names a file outside the checkpoint: {name!r}"
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != entry["bytes"]:
                return f"{name} has {path.stat().st_size} bytes, not {entry['bytes']} (truncated?)"
            if _sha256(path) != entry["sha256"]:
                return f"{name} does not match its sha256 (corrupted)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"{MANIFEST} is missing or unreadable ({error!r})"
    return None


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest intact checkpoint in `output_dir`, or None when it holds none.

    Damaged newer checkpoints are skipped with a warning naming the one used instead; stale temporary
    directories of interrupted saves are removed. Raises ValueError when checkpoints exist but none is
    intact, or when one in the old pickle format (`trainer_state.pt`) is met."""
    output_dir = Path(output_dir).expanduser()
    if not output_dir.is_dir():
        return None
    _remove_stale_tmp(output_dir)
    skipped = []
    for candidate in reversed(_step_dirs(output_dir)):
        if (candidate / LEGACY_STATE).exists() and not (candidate / STATE_JSON).exists():
            raise _legacy_error(candidate)
        problem = checkpoint_problem(candidate)
        if problem is None:
            if skipped:
                warnings.warn(f"resuming from {candidate}: skipped damaged {'; '.join(skipped)} (removed at the "
                              "next save)", stacklevel=2)
            return candidate
        skipped.append(f"{candidate.name} ({problem})")
    if skipped:
        raise ValueError(f"no intact checkpoint in {output_dir}: {'; '.join(skipped)}. {START_FRESH}")
    return None


def load_model_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load a `save_pretrained` directory's weights into `model` (in place, exact)."""
    index = checkpoint / "model.safetensors.index.json"
    if index.exists():
        from transformers.modeling_utils import load_sharded_checkpoint

        load_sharded_checkpoint(model, str(checkpoint), strict=False)
        return
    _, unexpected = model.load_state_dict(load_file(str(checkpoint / "model.safetensors")), strict=False)
    if unexpected:
        raise ValueError(f"checkpoint {checkpoint} does not match the model: unexpected keys {unexpected[:5]}")
