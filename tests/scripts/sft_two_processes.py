"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2`: a tiny SFT run on CPU (gloo)."""

import sys

import torch
import torch.distributed as dist

sys.path.insert(0, sys.argv[2])  # the tests directory, for the shared synthetic data
from test_sft import small_model, synthetic_samples  # noqa: E402

from vla_compress.recovery.sft import SFTConfig, train_sft  # noqa: E402

torch.set_num_threads(1)
model = train_sft(small_model(), SFTConfig(data=synthetic_samples(32, 0), steps=3, batch_size=4, learning_rate=1e-3,
                                           warmup_steps=1, progress=False, output_dir=sys.argv[1]))
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, flat)
if dist.get_rank() == 0:
    assert dist.get_world_size() == 2
    assert torch.equal(gathered[0], gathered[1]), "replicas diverged: gradients were not synchronised"
    print("REPLICAS_IDENTICAL")
