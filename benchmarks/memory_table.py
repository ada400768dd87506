"""Checkpoint bytes by component: dense, RLRC (90% block pruning) and RLRC-4bit with each quantization scope.

Usage: python benchmarks/memory_table.py [--preset openvla-7b] [--method bnb]

The paper's RLRC-4bit quantizes the LLM's decoder linears only; the vision backbones, the projector,
the token embeddings and the output head stay in bf16. Each further scope of `quantize`
(`include_lm_head`, `include_projector`, `include_vision`) is added in turn. The pruned model is
quantized for real on this CPU (random weights: bytes do not depend on the values), once with every
scope; a row's bytes are its quantized components plus the others in bf16, which is exact because the
components are stored independently.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from vla_compress.modeling import OpenVLAForActionPrediction, component_sizes, preset_config
from vla_compress.pruning import prune
from vla_compress.quantization import quantize

SCOPES = (  # (row label, components quantized)
    ("RLRC-4bit: decoder linears (paper)", ("language_model",)),
    ("+ output head", ("language_model", "lm_head")),
    ("+ projector", ("language_model", "lm_head", "projector")),
    ("+ vision backbones", ("language_model", "lm_head", "projector", "vision_backbone")),
)
PARTS = ("vision_backbone", "projector", "language_model", "lm_head")


def shapes(preset: str) -> OpenVLAForActionPrediction:
    """The model on the meta device in bf16 (sizes without memory)."""
    with torch.device("meta"):
        return OpenVLAForActionPrediction(preset_config(preset)).to(torch.bfloat16)


def materialized(model: OpenVLAForActionPrediction) -> OpenVLAForActionPrediction:
    """Real CPU tensors of the same shapes, small random values (quantizers need finite numbers)."""
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02)
    return model


def measure(preset: str, method: str, bits: int) -> dict:
    dense = component_sizes(shapes(preset))
    pruned_shapes = prune(shapes(preset), 0.9, importance="l1")  # the criterion does not change the bytes
    pruned = component_sizes(pruned_shapes)
    quantized_model = quantize(materialized(pruned_shapes), bits, method, include_lm_head=True, include_projector=True,
                               include_vision=True, **({"compute_dtype": "bfloat16"} if method == "bnb" else {}))
    quantized = component_sizes(quantized_model)
    rows = [{"model": "dense (bf16)", **{p: dense[p].bytes for p in PARTS}},
            {"model": "RLRC 90% (bf16)", **{p: pruned[p].bytes for p in PARTS}}]
    for label, parts in SCOPES:
        rows.append({"model": label, **{p: (quantized if p in parts else pruned)[p].bytes for p in PARTS}})
    for row in rows:
        row["total"] = sum(row[p] for p in PARTS)
        row["x_smaller"] = rows[0]["total"] / row["total"]
    return {"preset": preset, "method": method, "bits": bits, "rows": rows,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"}


def markdown(result: dict) -> str:
    lines = [f"{result['preset']}, {result['method']} {result['bits']}-bit, measured on {result['machine']}", "",
             "| model | vision MB | projector MB | LLM MB (decoder + embeddings) | output head MB | total MB "
             "| x smaller |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        cells = " | ".join(f"{row[p] / 1e6:,.1f}" for p in PARTS)
        lines.append(f"| {row['model']} | {cells} | {row['total'] / 1e6:,.1f} | {row['x_smaller']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="openvla-7b", help="architecture preset (random weights)")
    parser.add_argument("--method", default="bnb", choices=("bnb", "quanto"), help="data-free 4-bit backend")
    parser.add_argument("--bits", type=int, default=4, choices=(4, 8))
    parser.add_argument("--output", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    result = measure(args.preset, args.method, args.bits)
    print(markdown(result))
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
