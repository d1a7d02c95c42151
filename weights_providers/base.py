"""The WeightsProvider interface: how the engine obtains weights, one tensor at a time.

The interface is deliberately narrow: a provider must implement only ``get(name)``.
Everything else is an optional hook with a harmless default, so a custom provider (a dict,
an ``.npz``, a network store) is a few lines, while the built-in providers use the hooks
to stream from disk with bounded memory. The trade-off: the engine cannot assume anything
about caching, so it asks for a weight every time it needs one and says when it is done.

How the engine drives a provider, per run:
    plan(order)        once, before the first run: every weight name in the exact order
                       it will be requested in one run (a name repeats if several ops use it).
                       Names it reads with ``get_rows`` are best left out (see below).
    restart()          at the start of every later run (rewind to the start of the plan).
    get(name)          just before an op that needs the weight ...
    get_rows(name, r)  ... or, for Gather from a huge table, only the rows ``r`` of it;
    finish_rows(name)  when an op that read ``name`` in chunks of rows returns, before its
                       output is used: a provider that checks a streamed tensor's checksum
                       only at its end raises WeightsRetry here (or from the last get_rows),
                       and the engine runs the op again;
    release(name)      right after that op: the engine holds no reference any more.
    drop(name)         instead of release, when the engine keeps a derived copy (a packed
                       operator) and will not ask for ``name`` while it lasts: a caching
                       provider may free its own copy (it must still serve a later get).
    close()            when the model is closed (also via ``with provider: ...``).

Attribute ``reads_row_ranges`` (default False): True when ``get_rows`` of a contiguous
range of rows reads only those rows and holds nothing after (DiskNoCache). The engine then
streams a weight larger than ``RunOptions.max_weight_chunk_bytes`` in chunks of rows, never
holding it whole; with False it asks for whole tensors (a read-ahead or a cache wants them).
``reads_rows(name)`` answers the same per tensor (default: ``reads_row_ranges``), for a
provider that streams only some tensors by rows (Http: those larger than its read-ahead
budget). The engine leaves the names it reads by rows out of ``plan``.

Arrays handed out must be treated as read-only by the caller (the engine never modifies
an input in place); a provider may hand out the same array object more than once.
"""
from __future__ import annotations

import abc
from typing import Sequence

import numpy as np


class WeightsProvider(abc.ABC):
    """Serves named weight tensors as numpy arrays. Only ``get`` is required."""

    reads_row_ranges: bool = False

    @abc.abstractmethod
    def get(self, name: str) -> np.ndarray:
        """Return the weight ``name`` (raise WeightsError or KeyError if there is none)."""

    # --- optional hooks (no-op defaults) -------------------------------------------------

    def plan(self, order: Sequence[str]) -> None:
        """Hint: the names ``get`` will be called with in one run, in order (may repeat)."""

    def release(self, name: str) -> None:
        """Hint: the engine no longer holds the array last returned for ``name``."""

    def drop(self, name: str) -> None:
        """Hint: like release, and the engine will not need ``name`` again for a while."""
        self.release(name)

    def reads_rows(self, name: str) -> bool:
        """Whether the engine should read ``name`` in chunks of rows (see the module text)."""
        return self.reads_row_ranges

    def finish_rows(self, name: str) -> None:
        """Hint: an op read ``name`` by rows and returned; raise WeightsRetry to have it rerun."""

    def restart(self) -> None:
        """Hint: a new run starts; requests follow the plan from its beginning again."""

    def close(self) -> None:
        """Free files, threads and memory. The provider must not be used afterwards."""

    def get_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (int64, any shape, negative counts from the end) of weight ``name``.

        Same result as ``np.take(get(name), rows, axis=0)``: shape ``rows.shape + w.shape[1:]``.
        This default reads the whole tensor; providers that can read part of a tensor
        override it (used by Gather from an embedding table much larger than the rows used).
        """
        return np.take(self.get(name), np.asarray(rows, dtype=np.int64), axis=0)

    # --- context manager -----------------------------------------------------------------

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
