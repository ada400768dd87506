"""The one `Accelerator` both recovery stages use: one CPU, one GPU, or several processes (DDP)."""

from __future__ import annotations

import torch


def make_accelerator(device: str | None, gradient_accumulation_steps: int = 1):
    """An `accelerate.Accelerator` for `device` ("cpu", "cuda", or None = CUDA when available)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    device_type = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")).type
    # The VLA has parameters the action pass never uses (the ViTs' last block, SigLIP's pooling head):
    # DDP must be told to skip them.
    ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(cpu=device_type == "cpu", gradient_accumulation_steps=gradient_accumulation_steps,
                       kwargs_handlers=[ddp_kwargs])
