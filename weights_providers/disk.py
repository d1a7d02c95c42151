"""Providers that stream weights from the local weights file.

DiskNoCache  reads a tensor on every ``get`` and keeps nothing: the least memory (only
             the arrays the engine holds), but every op waits for its weights' I/O.
DiskPrefetch adds a background thread reading ahead in plan order within a byte budget
             (32 MiB by default): the I/O of the next weights overlaps the current op,
             for at most ``budget_bytes`` more memory (readahead.py has the rules).

Both override ``get_rows`` to read only the requested rows of a big table (after a
streamed checksum), and both accept the weights file or the model directory holding it.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from .base import WeightsProvider
from .format import WeightsError, WeightsIndex
from .readahead import ReadAhead
from .tensorfile import TensorFile


class _OnDisk(WeightsProvider):
    """What both disk providers expose about their file."""

    _file: TensorFile

    @property
    def path(self) -> str:
        return self._file.path

    @property
    def index(self) -> WeightsIndex:
        return self._file.index


class DiskNoCache(_OnDisk):
    """Reads each tensor from disk on every ``get``; holds no tensor data."""

    reads_row_ranges = True     # a contiguous row range is one small mapping (tensorfile.read_rows)

    def __init__(self, path, verify="always", use_mmap: bool = True):
        self._file = TensorFile(path, verify, use_mmap)

    def get(self, name: str) -> np.ndarray:
        return self._file.read(self._file.entry(name))

    def get_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self._file.read_rows(self._file.entry(name), rows)

    def close(self) -> None:
        self._file.close()

    def __repr__(self) -> str:
        return f"DiskNoCache({self.path!r}, {len(self.index)} tensors)"


class DiskPrefetch(_OnDisk):
    """Reads tensors ahead of use in plan order on a background thread, within a budget."""

    def __init__(self, path, budget_bytes: int = 32 * 2**20, verify="always"):
        self._file = TensorFile(path, verify)
        # The thread references only the file's read method, never this object, so an
        # unclosed provider can still be collected (and __del__ stops the thread).
        # ``readahead`` is public for its statistics and ``wait_idle`` (tests, tuning).
        # Mapped tensors are touched on the read-ahead thread, so their page faults (the
        # actual disk reads of a cold file) happen there, not in the op that uses them.
        self.readahead = ReadAhead(functools.partial(self._file.read, touch=True), budget_bytes)

    @property
    def budget_bytes(self) -> int:
        return self.readahead.budget_bytes

    @property
    def peak_buffered_bytes(self) -> int:
        """Most bytes ever held read-ahead but not yet handed out (for tests and tuning)."""
        return self.readahead.peak_buffered_bytes

    def plan(self, order: Sequence[str]) -> None:
        unknown = [n for n in dict.fromkeys(order) if n not in self.index]
        if unknown:
            raise WeightsError(f"plan names {len(unknown)} tensor(s) not in weights file "
                               f"{self.path}: {unknown[:5]}")
        self.readahead.plan([self.index[n] for n in order])

    def restart(self) -> None:
        self.readahead.restart()

    def get(self, name: str) -> np.ndarray:
        return self.readahead.take(self._file.entry(name))

    def get_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        entry = self._file.entry(name)
        # A table read by rows should never be read ahead whole (the engine ought to leave
        # it out of the plan; if it did not, stop reading it ahead from now on).
        self.readahead.exclude(name)
        found, table = self.readahead.claim(name)
        if found:
            return np.take(table, np.asarray(rows, dtype=np.int64), axis=0)
        return self._file.read_rows(entry, rows)

    def close(self) -> None:
        self.readahead.close()
        self._file.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (f"DiskPrefetch({self.path!r}, {len(self.index)} tensors, "
                f"budget {self.budget_bytes} bytes)")
