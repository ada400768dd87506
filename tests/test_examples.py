"""Every script in examples/ runs, on the tiny preset with tiny step counts."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, args: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_quickstart_synthetic(monkeypatch, capsys):
    run_example("quickstart.py", ["--preset", "tiny", "--synthetic"], monkeypatch)
    assert "pruned 50%" in capsys.readouterr().out


def test_three_lines(tmp_path, monkeypatch, capsys):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "compressed"
    run_example(
        "three_lines.py",
        ["--preset", "tiny", "--samples", "4", "--sft-steps", "2", "--output", str(out)],
        monkeypatch,
    )
    printed = capsys.readouterr().out
    assert "reloaded actions identical: True" in printed and "4-bit bnb" in printed
    assert (out / "config.json").is_file()


def test_openvla_7b_dry_run(monkeypatch, capsys):
    run_example("openvla_7b_gpu.py", ["--dry-run"], monkeypatch)
    printed = capsys.readouterr().out
    assert "7,541,237,184 -> 2,127,5" in printed and "600,000 env steps" in printed


@pytest.mark.sim
def test_deploy_cpu(tmp_path, monkeypatch, capsys):
    from vla_compress import load_vla, prune

    checkpoint = tmp_path / "pruned"
    prune(load_vla("tiny"), ratio=0.5, importance="l2").save_pretrained(checkpoint)
    run_example(
        "deploy_cpu.py", [str(checkpoint), "--max-episode-steps", "3", "--image-size", "64"], monkeypatch
    )
    assert "success: False after 3 steps" in capsys.readouterr().out
