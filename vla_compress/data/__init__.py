"""Demonstration datasets: scripted generation in the ManiSkill suite, HDF5 storage, norm stats, reader.

Reading (:class:`DemoDataset`, :func:`compute_norm_stats`) needs only h5py; generation imports ManiSkill.
"""

from vla_compress.data.demos import DATASET_NAME, DemoDataset, compute_norm_stats, generate_demos

__all__ = ["DATASET_NAME", "DemoDataset", "compute_norm_stats", "generate_demos"]
