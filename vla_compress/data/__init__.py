"""Demonstration datasets: scripted generation in the ManiSkill suite, HDF5 storage, norm stats, reader.

Reading (:class:`DemoDataset`, :func:`compute_norm_stats`) needs only h5py; generation and DAgger
collection (:func:`collect_dagger`) import ManiSkill.
:class:`ResidentDemos` holds samples as tensors on the training device (fast SFT of small policies on a GPU).
"""

from vla_compress.data.dagger import collect_dagger
from vla_compress.data.demos import DATASET_NAME, DemoDataset, compute_norm_stats, generate_demos
from vla_compress.data.resident import ResidentDemos

__all__ = ["DATASET_NAME", "DemoDataset", "ResidentDemos", "collect_dagger", "compute_norm_stats", "generate_demos"]
