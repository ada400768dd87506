"""Run by tests/test_fault_injection.py: tiny SFT or PPO runs killed with SIGKILL at given points, then resumed.

    python fault_worker.py {sft|ppo} WORK_DIR TESTS_DIR KILLS_JSON

The imports happen once; every run is a forked child, a fresh process that dies as `kill -9` kills
(no cleanup, no flush). KILLS_JSON lists one kill point per attempt in WORK_DIR/run:
["fsync", k] dies before the k-th fsync of a checkpoint write, ["replace", k] right after the k-th rename
of a checkpoint directory, ["step", k] after the k-th training step (SFT) or update (PPO), before its
checkpoint. A last attempt runs to the end; WORK_DIR/reference is the same run, never interrupted.
Prints one JSON line: per attempt, the kill point, the exit status (-9: killed) and the run directory's
entries afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, sys.argv[3])  # the tests directory: the shared tiny models, data and fake env
from test_ppo import tiny_config  # noqa: E402
from test_sft import small_model, synthetic_samples  # noqa: E402

from vla_compress import load_vla  # noqa: E402
from vla_compress.recovery import checkpoint  # noqa: E402
from vla_compress.recovery.ppo import train_ppo  # noqa: E402
from vla_compress.recovery.sft import SFTConfig, train_sft  # noqa: E402

SFT_STEPS = 8
PPO_UPDATES = 5


def arm(kill: list | None):
    """Install the kill point in this (child) process; returns the per-step hook (an `eval_fn`)."""
    calls = {"fsync": 0, "replace": 0, "step": 0}

    def hit(name: str) -> None:
        calls[name] += 1
        if kill is not None and [name, calls[name]] == kill:
            os.kill(os.getpid(), signal.SIGKILL)

    real_fsync = checkpoint._fsync

    def fsync(path: Path) -> None:
        hit("fsync")
        real_fsync(path)

    def replace(src, dst) -> None:
        os.replace(src, dst)
        hit("replace")

    class Os:  # the os module as checkpoint.py sees it, with a counting rename
        def __getattr__(self, name: str):
            return replace if name == "replace" else getattr(os, name)

    checkpoint._fsync, checkpoint.os = fsync, Os()
    return lambda model: hit("step") or {}


def run_sft(output_dir: Path, eval_fn) -> None:
    config = SFTConfig(data=synthetic_samples(32, seed=0), steps=SFT_STEPS, batch_size=4, learning_rate=1e-3,
                       warmup_steps=1,
                       checkpoint_every=1, eval_every=1, eval_fn=eval_fn, output_dir=output_dir, progress=False)
    train_sft(small_model(), config)


def run_ppo(output_dir: Path, eval_fn) -> None:
    config = tiny_config(output_dir.parent, output_dir.name, updates=PPO_UPDATES, resume=True, eval_every=1,
                         eval_fn=eval_fn)
    train_ppo(load_vla("tiny"), config)


def attempt(run, output_dir: Path, kill: list | None) -> int:
    """Run once in a forked child; its exit status (negative: the signal that ended it)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            run(output_dir, arm(kill))
        except BaseException:  # noqa: BLE001 - reported through the exit status
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def main() -> None:
    mode, work, kills = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[4])
    torch.set_num_threads(1)
    run = {"sft": run_sft, "ppo": run_ppo}[mode]
    report = {"reference": attempt(run, work / "reference", None), "attempts": []}
    for kill in [*kills, None]:
        status = attempt(run, work / "run", kill)
        entries = sorted(os.listdir(work / "run")) if (work / "run").is_dir() else []
        report["attempts"].append({"kill": kill, "status": status, "entries": entries})
    print(json.dumps(report))


if __name__ == "__main__":
    main()
