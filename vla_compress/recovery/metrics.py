"""Training metrics to a JSON-lines file (and TensorBoard when installed), under stable names.

Names follow CleanRL: `losses/...`, `charts/...`, `eval/...`. `read_metrics` loads a log back for plots.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLogger:
    """Append-only metrics log; safe to reopen on resume (rows are keyed by step)."""

    def __init__(self, output_dir: str | Path, tensorboard: bool = True) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.path.parent / "tensorboard"))
            except ImportError:  # tensorboard is optional (`pip install vla-compress[rl]`)
                self.writer = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                if math.isfinite(float(value)):
                    self.writer.add_scalar(key, float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a metrics.jsonl (a directory holding one is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
