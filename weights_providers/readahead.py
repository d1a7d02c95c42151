"""Bounded read-ahead of tensors in plan order, on one background thread.

Generic over where bytes come from: it is given ``fetch(entry) -> ndarray`` (a positioned
disk read today, an HTTP range request later) and entries with ``.name`` and ``.nbytes``.
The trade-off: memory for latency. While the engine computes one op, the thread reads the
next weights, holding at most ``budget_bytes`` of read-but-not-yet-handed-out tensors;
the very next tensor is always read even if it alone exceeds the budget (it must be read
anyway, and nothing else is held while it is). Bigger budgets hide more I/O stalls.

Rules (one consumer thread calls ``take``/``claim``):
  * ``take`` of the next planned name waits for the thread (a Condition, no polling).
  * A name that appears later in the plan is served out of order: what was read ahead
    before it is dropped and read-ahead continues from the position after it.
  * A name not in the rest of the plan (or with no plan at all) is fetched synchronously
    and changes nothing.
  * An error raised by ``fetch`` in the thread is kept and raised by the ``take`` of that
    tensor, so it surfaces in the engine, naming the tensor.
``fetch`` must be safe to call from two threads at once (the thread and a synchronous take).
"""
from __future__ import annotations

import bisect
import threading
from typing import Callable, Sequence

import numpy as np

from .format import WeightsError


class ReadAhead:
    """Reads planned entries ahead of their ``take``, within a byte budget."""

    def __init__(self, fetch: Callable[[object], np.ndarray], budget_bytes: int,
                 *, thread_name: str = "onnxstream-readahead"):
        if budget_bytes < 0:
            raise ValueError(f"read-ahead budget must be >= 0 bytes, got {budget_bytes}")
        self._fetch = fetch
        self.budget_bytes = int(budget_bytes)
        self._thread_name = thread_name
        self._cond = threading.Condition()
        self._plan: list = []                       # entries, in request order
        self._positions: dict[str, list[int]] = {}  # name -> its plan positions, ascending
        self._next = 0      # plan position of the next expected request
        self._ahead = 0     # next plan position the thread will consider reading
        self._slots: dict[int, tuple[bool, object]] = {}  # position -> (ok, array or exception)
        self._inflight: tuple[int, int] | None = None    # (generation, position) being fetched
        self._gen = 0       # bumped by plan/restart: results of older fetches are dropped
        self._skip: set[str] = set()  # names never to read ahead (read by rows instead)
        self._buffered = 0  # bytes in _slots plus the fetch in flight
        self.peak_buffered_bytes = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    # --- control -------------------------------------------------------------------------

    def plan(self, entries: Sequence) -> None:
        """Set the request order of one run and start reading it from the beginning."""
        with self._cond:
            self._check_open()
            self._rewind()  # drops slots of the old plan first (their sizes come from it)
            self._plan = list(entries)
            self._positions = {}
            for pos, entry in enumerate(self._plan):
                self._positions.setdefault(entry.name, []).append(pos)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
                self._thread.start()

    def restart(self) -> None:
        """Rewind to the start of the plan (drops whatever was read ahead)."""
        with self._cond:
            self._check_open()
            self._rewind()

    def exclude(self, name: str) -> None:
        """Never read ``name`` ahead from now on (it is read another way, e.g. by rows)."""
        with self._cond:
            self._skip.add(name)

    def close(self) -> None:
        """Stop and join the thread, drop buffered tensors. Safe to call twice."""
        with self._cond:
            self._closed = True
            self._drop_slots(lambda pos: True)
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the thread has read all it may (budget full or plan done); for tests."""
        def idle():
            thread = self._thread
            return (self._closed or thread is None or not thread.is_alive()
                    or (self._inflight is None and self._next_job() is None))

        with self._cond:
            return self._cond.wait_for(idle, timeout)

    # --- consumer side -------------------------------------------------------------------

    def take(self, entry) -> np.ndarray:
        """The tensor for ``entry``: from the read-ahead if it was read, else fetched now."""
        found, arr = self.claim(entry.name)
        return arr if found else self._fetch(entry)

    def claim(self, name: str) -> tuple[bool, np.ndarray | None]:
        """Advance the plan past the next occurrence of ``name``.

        Returns (True, array) if the read-ahead read it, (False, None) if the caller must
        read it (then the thread will not). Raises the error the thread met reading it.
        """
        with self._cond:
            self._check_open()
            pos = self._position_after(name, self._next)
            if pos is None:
                return False, None  # unplanned here: serve it without disturbing read-ahead
            self._drop_slots(lambda p: p < pos)
            self._next = pos
            if pos >= self._ahead:
                self._ahead = pos + 1  # the caller reads it; the thread moves past it
                self._next = pos + 1
                self._cond.notify_all()
                return False, None
            while pos not in self._slots and self._inflight == (self._gen, pos):
                self._cond.wait()
                self._check_open()
            self._next = pos + 1
            if pos not in self._slots:  # skipped by the thread (excluded) or thread died
                self._cond.notify_all()
                return False, None
            ok, value = self._slots.pop(pos)
            self._buffered -= self._plan[pos].nbytes
            self._cond.notify_all()
        if ok:
            return True, value
        if isinstance(value, WeightsError):
            raise value
        raise WeightsError(f"reading tensor {name!r} ahead failed: {value!r}") from value

    # --- internals (call with the lock held) ---------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise WeightsError("weights provider is closed")

    def _rewind(self) -> None:
        self._gen += 1
        self._drop_slots(lambda pos: True)
        self._next = self._ahead = 0
        self._cond.notify_all()

    def _drop_slots(self, which) -> None:
        for pos in [p for p in self._slots if which(p)]:
            del self._slots[pos]
            self._buffered -= self._plan[pos].nbytes

    def _position_after(self, name: str, start: int) -> int | None:
        positions = self._positions.get(name)
        if not positions:
            return None
        i = bisect.bisect_left(positions, start)
        return positions[i] if i < len(positions) else None

    def _next_job(self) -> int | None:
        """The plan position the thread should read now, or None to wait."""
        plan = self._plan
        while self._ahead < len(plan) and plan[self._ahead].name in self._skip:
            self._ahead += 1
        pos = self._ahead
        if pos >= len(plan):
            return None
        if pos == self._next or self._buffered + plan[pos].nbytes <= self.budget_bytes:
            return pos
        return None

    # --- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    pos = None if self._closed else self._next_job()
                    while pos is None:
                        if self._closed:
                            return
                        self._cond.wait()
                        pos = None if self._closed else self._next_job()
                    entry, gen = self._plan[pos], self._gen
                    self._ahead = pos + 1
                    self._inflight = (gen, pos)
                    self._buffered += entry.nbytes
                    self.peak_buffered_bytes = max(self.peak_buffered_bytes, self._buffered)
                try:
                    result = (True, self._fetch(entry))
                except Exception as e:  # kept for the take() of this tensor
                    result = (False, e)
                with self._cond:
                    self._inflight = None
                    if gen == self._gen and pos >= self._next and not self._closed:
                        self._slots[pos] = result  # its bytes stay counted
                    else:
                        self._buffered -= entry.nbytes  # dropped by restart/out-of-order/close
                    self._cond.notify_all()
                del result, entry
        finally:
            with self._cond:  # on any exit, let a waiting take() fall back to reading itself
                self._inflight = None
                self._cond.notify_all()
