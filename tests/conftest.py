"""Shared fixtures: tiny models with non-degenerate (varied) outputs, and synthetic robot samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_compress.modeling import build_model, preset_config

NORM_STATS = {
    "maniskill": {
        "action": {
            "q01": [-0.05, -0.05, -0.05, -0.1, -0.1, -0.1, -1.0],
            "q99": [0.05, 0.05, 0.05, 0.1, 0.1, 0.1, 1.0],
            "mask": [True] * 6 + [False],
        }
    }
}


def varied(model):
    """Scale the output head so a random model's greedy actions differ across inputs."""
    with torch.no_grad():
        model.language_model.lm_head.weight.mul_(40.0)
    return model


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    model = varied(build_model(preset_config("tiny")))
    model.config.norm_stats = NORM_STATS
    return model.eval()


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(3, 96, 96, 3), dtype=np.uint8)


@pytest.fixture
def instructions():
    return ["put the red cube on the blue plate", "put the green cube on the yellow plate", "lift the cube"]


@pytest.fixture
def one_thread():
    """Tiny matmuls on a shared 2-core machine run fastest (and steadiest) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
