"""Weight-only low-bit on a CPU against fp32: one decoder's linears, then whole models (docs/quantization.md).

1. Stack: the decoder linears of a preset (distinct weights per layer, as a decode step reads them) run
   once at 1 row (a decode step) and at `--prefill-rows` rows (a prompt pass); median of 5 interleaved
   repeats. Paths: fp32 `nn.Linear`, `AtenLinear` int8 / int4, quanto int8 / int4, and torchao's CPU
   weight-only configs when torchao is installed.
2. Whole model: `profile(model, batch_size=1, warmup=2, iters=5)` of the preset dense fp32 and with its
   decoder linears quantized by aten and quanto, `--rounds` interleaved rounds, median latency per action.
Only ratios within one run compare on a shared machine.

    python benchmarks/cpu_lowbit.py --preset openvla-7b-proxy      # as in docs/quantization.md
    python benchmarks/cpu_lowbit.py --preset tiny --skip-stack
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from vla_compress import load_vla, quantize
from vla_compress.deps import installed
from vla_compress.evaluation import profile
from vla_compress.quantization import AtenLinear
from vla_compress.quantization.scope import default_filter, select_linears


def quanto_linear(bits: int) -> Callable[[nn.Linear], nn.Module]:
    def make(linear: nn.Linear) -> nn.Module:
        from optimum.quanto import qtypes
        from optimum.quanto.nn import QLinear

        module = QLinear.from_module(linear, weights=qtypes["qint8" if bits == 8 else "qint4"])
        module.freeze()
        return module
    return make


def torchao_linear(bits: int) -> Callable[[nn.Linear], nn.Module]:
    def make(linear: nn.Linear) -> nn.Module:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        if bits == 8:
            config = Int8WeightOnlyConfig(set_inductor_config=False)
        else:
            from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

            group = next(g for g in (128, 64, 32) if linear.in_features % g == 0)
            config = PrototypeInt4WeightOnlyConfig(group_size=group, set_inductor_config=False)
        holder = nn.Sequential(linear)
        quantize_(holder, config)
        return holder[0]
    return make


def stack_paths() -> dict[str, Callable[[nn.Linear], nn.Module]]:
    paths = {"fp32": lambda linear: linear, "aten int8": lambda linear: AtenLinear.from_linear(linear, 8),
             "aten int4": lambda linear: AtenLinear.from_linear(linear, 4)}
    if installed("optimum.quanto"):
        paths.update({"quanto int8": quanto_linear(8), "quanto int4": quanto_linear(4)})
    if installed("torchao"):
        paths.update({"torchao int8": torchao_linear(8), "torchao int4": torchao_linear(4)})
    return paths


def run_stack(preset: str, rows_list: list[int], repeats: int = 5) -> None:
    model = load_vla(preset, seed=0)
    shapes = [(linear.out_features, linear.in_features)
              for linear in (model.get_submodule(name) for name in select_linears(model, default_filter()))]
    del model
    torch.manual_seed(0)
    stacks = {}
    for label, make in stack_paths().items():
        stacks[label] = [make(nn.Linear(k, n, bias=False).requires_grad_(False)) for n, k in shapes]
    print(f"\n{preset}: {len(shapes)} decoder linears, {sum(n * k for n, k in shapes) / 1e6:.1f} M weights; "
          f"one pass, median of {repeats} interleaved repeats (x = speed-up over fp32)")
    for rows in rows_list:
        inputs = {k: torch.randn(rows, k) for k in {k for _, k in shapes}}
        times: dict[str, list[float]] = {label: [] for label in stacks}
        with torch.no_grad():
            for _ in range(repeats):
                for label, layers in stacks.items():
                    for layer, (_, k) in zip(layers, shapes):  # warm-up pass
                        layer(inputs[k])
                    start = time.perf_counter()
                    for layer, (_, k) in zip(layers, shapes):
                        layer(inputs[k])
                    times[label].append(time.perf_counter() - start)
        base = statistics.median(times["fp32"])
        print(f"| path | {rows} row(s) | x fp32 |\n|---|---|---|")
        for label, values in times.items():
            median = statistics.median(values)
            print(f"| {label} | {median * 1e3:.1f} ms | {base / median:.2f} |")


def run_models(preset: str, rounds: int) -> None:
    variants = ["fp32", "aten 8", "aten 4", "quanto 8", "quanto 4"]
    if not installed("optimum.quanto"):
        variants = variants[:3]
    models = {}
    for variant in variants:
        model = load_vla(preset, seed=0)
        if variant != "fp32":
            method, bits = variant.split()
            quantize(model, int(bits), method)
        models[variant] = model
    latencies: dict[str, list[float]] = {variant: [] for variant in models}
    for _ in range(rounds):
        for variant, model in models.items():
            latencies[variant].append(profile(model, batch_size=1, warmup=2, iters=5).latency_ms_median)
    base = statistics.median(latencies["fp32"])
    print(f"\n{preset}: profile(batch_size=1, warmup=2, iters=5), median over {rounds} interleaved rounds\n"
          "| model | ms / action | x fp32 |\n|---|---|---|")
    for variant, values in latencies.items():
        median = statistics.median(values)
        print(f"| {variant} | {median:.1f} | {base / median:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="openvla-7b-proxy")
    parser.add_argument("--prefill-rows", type=int, default=280)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-stack", action="store_true")
    parser.add_argument("--skip-models", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} thread(s)")
    if not args.skip_stack:
        run_stack(args.preset, [1, args.prefill_rows])
    if not args.skip_models:
        run_models(args.preset, args.rounds)


if __name__ == "__main__":
    main()
