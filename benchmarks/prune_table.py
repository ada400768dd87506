"""Parameters and LLM bytes after block-wise pruning at several ratios (tiny: fp32; openvla-7b: bf16, meta device).

Usage: python benchmarks/prune_table.py   (prints a markdown table; no downloads, no weights needed)
"""

from __future__ import annotations

import platform

import torch

from vla_compress.modeling import OpenVLAForActionPrediction, build_model, component_sizes, preset_config
from vla_compress.pruning import prune

RATIOS = (0.2, 0.5, 0.9)


def make(preset: str) -> OpenVLAForActionPrediction:
    if preset == "openvla-7b":  # shapes only: parameters live on the meta device
        with torch.device("meta"):
            return OpenVLAForActionPrediction(preset_config(preset)).to(torch.bfloat16)
    return build_model(preset_config(preset))


def row(preset: str, ratio: str, sizes: dict, widths: str) -> str:
    llm = sizes["language_model"]
    return (f"| {preset} | {ratio} | {sizes['total'].params / 1e6:,.2f} M | {llm.params / 1e6:,.2f} M "
            f"| {llm.bytes / 2**20:,.1f} MiB | {widths} |")


def rows(preset: str) -> list[str]:
    out = [row(preset, "dense", component_sizes(make(preset)), "-")]
    for ratio in RATIOS:
        model = prune(make(preset), ratio, importance="l1")  # the criterion does not change the counts
        width = model.prune_report.layer_widths[1]
        widths = f"{width['num_attention_heads']} heads, {width['intermediate_size']} MLP"
        out.append(row(preset, str(ratio), component_sizes(model), widths))
    return out


def main() -> None:
    print(f"machine: {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| preset | ratio | total params | LLM params | LLM bytes | widths of layers 1..L-2 |")
    print("|---|---|---|---|---|---|")
    for preset in ("tiny", "openvla-7b"):
        print("\n".join(rows(preset)))


if __name__ == "__main__":
    main()
