"""Every script in examples/ runs, on the tiny preset with tiny step counts."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, args: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_quickstart_is_the_readme_command(monkeypatch, capsys):
    """quickstart.py runs the pipeline the README's first command runs, with the same settings."""
    from typer.testing import CliRunner

    import vla_compress.pipeline
    from vla_compress.cli import app

    calls = []

    class Report:
        stages = [SimpleNamespace(path="rlrc-tiny/4bit")]

        def markdown(self) -> str:
            return "| stage | IND success % |"

    def fake_run_rlrc(model, config, output_dir):
        calls.append((model, config, str(output_dir)))
        return Report()

    monkeypatch.setattr(vla_compress.pipeline, "run_rlrc", fake_run_rlrc)
    run_example("quickstart.py", [], monkeypatch)
    assert "| stage | IND success %" in capsys.readouterr().out
    first_block = (EXAMPLES.parent / "README.md").read_text().split("```bash")[1].split("```")[0]
    command = re.search(r"vla-compress (rlrc .+)", first_block).group(1).split()
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert len(calls) == 2 and calls[0] == calls[1], calls


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
    assert "7,541,237,184 -> 2,127,144,384" in printed and "600,000 env steps" in printed


@pytest.mark.sim
def test_deploy_cpu(tmp_path, monkeypatch, capsys):
    from vla_compress import load_vla, prune

    checkpoint = tmp_path / "pruned"
    prune(load_vla("tiny"), ratio=0.5, importance="l2").save_pretrained(checkpoint)
    run_example(
        "deploy_cpu.py", [str(checkpoint), "--max-episode-steps", "3", "--image-size", "64"], monkeypatch
    )
    assert "success: False after 3 steps" in capsys.readouterr().out
