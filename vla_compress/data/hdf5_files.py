"""HDF5 files opened lazily, once per process, so datasets work inside DataLoader workers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py


class ProcessLocalFiles:
    """`files[i]` is an open read-only `h5py.File`; handles are reopened after a fork/spawn."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    def __getitem__(self, index: int) -> h5py.File:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if index not in self._handles:
            self._handles[index] = h5py.File(self.paths[index], "r")
        return self._handles[index]
