"""The main job through the Python API: compress the shipped policy end to end and show what it gained and cost.

    python examples/quickstart.py      # 8 min on 2 CPU cores; the same as the README's first command:
    vla-compress rlrc tiny-maniskill -o rlrc-tiny --sft-steps 500 --episodes 1 --tasks-per-split 4

Prune 90% (block-wise, Taylor), SFT, quantize to 4 bits; every stage evaluated in the simulator
and profiled. A rerun skips the stages already in rlrc-tiny/.
"""

from vla_compress.pipeline import RLRCConfig, run_rlrc

if __name__ == "__main__":  # the simulator's workers are spawned processes
    config = RLRCConfig(ratio=0.9, sft_steps=500, bits=4, episodes=1, tasks_per_split=4)
    report = run_rlrc("tiny-maniskill", config, "rlrc-tiny")
    print(report.markdown())
