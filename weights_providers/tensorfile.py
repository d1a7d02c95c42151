"""Checked, positioned reads of tensors from one local weights file (shared by the disk providers).

A tensor of at least MMAP_MIN_BYTES is memory-mapped, not copied: the returned (read-only)
array's memory is the OS page cache itself, mapped for as long as the array lives and
unmapped when the engine drops it. Measured on the SD 1.5 UNet (3.4 GB, warm page cache,
x86-64): reading every weight with pread took 0.5-1.4 s per run, mapping and touching every
page 0.11 s. A cold file is read by the page faults (DiskPrefetch touches the pages on its
read-ahead thread, so that happens off the compute thread). Mapped pages are clean page
cache: under memory pressure the kernel drops them instead of swapping. Before mapping, the
file's current size is checked, so a file truncated after opening gives a WeightsError,
not a SIGBUS. Smaller tensors, and files that cannot be mapped, are read with a positioned
read (``os.preadv``) on one file descriptor, so several threads
may read at once without a shared seek position, and a tensor lands straight in the
buffer of the returned array (allocated with ``np.empty``): no intermediate bytes object.
Row reads (``read_rows``) fetch only the rows asked for (a contiguous range of at least
MMAP_MIN_BYTES is mapped alone: how the engine streams a big weight in chunks); the tensor's CRC-32 is checked
first by streaming the whole tensor through CRC-32 (format.crc32) in 1 MiB chunks, once per file
opening, so a 151 MB embedding table costs 1 MiB of memory, not 151 MB. The trade-off:
the first row read of a big table reads it all once (from disk or page cache).
"""
from __future__ import annotations

import mmap
import os
import threading

import numpy as np

from .format import (WEIGHTS_FILE, TensorEntry, WeightsError, WeightsIndex, crc32, decode_rows, decode_tensor,
                     row_run)

CHUNK_BYTES = 1 << 20
# Tensors at least this big are memory-mapped (below it a mapping costs more than a copy).
MMAP_MIN_BYTES = 1 << 16
PAGE = mmap.PAGESIZE
# Bytes past a tensor that XNNPACK may read (native.XNN_EXTRA_BYTES): mapped when the file has them.
XNN_SLACK = 16


def weights_path(path) -> str:
    """The weights file for ``path``: the file itself, or ``<dir>/weights.bin`` for a model dir."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return os.path.join(path, WEIGHTS_FILE)
    return path


VERIFY_MODES = ("always", "first", "never")


def verify_mode(verify) -> str:
    """``verify`` as one of VERIFY_MODES (True means "always", False "never")."""
    if verify is True:
        return "always"
    if verify is False:
        return "never"
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES} (or a bool), got {verify!r}")
    return verify


class TensorFile:
    """An open weights file: its index and checked reads of whole tensors or of rows.

    ``verify``: "always" checks every read against the tensor's CRC-32; "first" checks a
    tensor the first time it is read through this file object and trusts later reads of
    it (a run streams every weight again, and a CRC of 3.3 GB costs about a second of CPU
    here, several on a Raspberry Pi); "never" skips checks.
    """

    def __init__(self, path, verify="always", use_mmap: bool = True):
        self.path = weights_path(path)
        self.use_mmap = use_mmap
        self.verify_mode = verify_mode(verify)
        self.verify = self.verify_mode != "never"
        self.index = WeightsIndex.read(self.path)
        try:
            self._fd: int | None = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as e:
            raise WeightsError(f"cannot open weights file {self.path}: {e}") from None
        self._verified: set[str] = set()  # names whose checksum already passed
        self._lock = threading.Lock()

    def entry(self, name: str) -> TensorEntry:
        return self.index[name]

    def close(self) -> None:
        with self._lock:
            fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # --- whole tensors -------------------------------------------------------------------

    def read(self, entry: TensorEntry, touch: bool = False) -> np.ndarray:
        """The whole tensor, checked against its CRC-32: a read-only view of the mapped file
        (``touch``: fault every page in now) or, for small tensors, a fresh buffer."""
        check = self.verify and not (self.verify_mode == "first" and entry.name in self._verified)
        if self.use_mmap and entry.nbytes >= MMAP_MIN_BYTES:
            buf = self._map(entry)
            if buf is not None:
                arr = decode_tensor(entry, buf, self.path, check)
                if check:
                    self._verified.add(entry.name)
                elif touch:
                    _touch_pages(buf)
                return arr
        raw = np.empty(entry.nbytes, dtype=np.uint8)
        got = self._pread(entry, raw, entry.offset)
        arr = decode_tensor(entry, raw if got == entry.nbytes else raw[:got], self.path, check)
        if check:
            self._verified.add(entry.name)
        return arr

    # --- rows ----------------------------------------------------------------------------

    def read_rows(self, entry: TensorEntry, rows) -> np.ndarray:
        """``np.take(tensor, rows, axis=0)`` reading only the rows needed (after the checksum)."""
        rows = np.asarray(rows)
        if rows.dtype.kind not in "iu":
            raise TypeError(f"get_rows: row indices for tensor {entry.name!r} must be integers, got {rows.dtype}")
        if not entry.shape:
            raise ValueError(f"get_rows: tensor {entry.name!r} in {self.path} is 0-d and has no rows")
        n = entry.shape[0]
        flat = rows.astype(np.int64).reshape(-1)
        bad = (flat < -n) | (flat >= n)
        if bad.any():
            raise IndexError(f"get_rows: index {int(flat[bad][0])} is out of bounds for tensor "
                             f"{entry.name!r} with {n} rows (shape {list(entry.shape)})")
        flat = np.where(flat < 0, flat + n, flat)
        if self.verify and entry.name not in self._verified:
            self.check(entry)

        row_shape = entry.shape[1:]
        row_bytes = entry.nbytes // n if n else 0
        run = row_run(flat) if flat.size > 1 else None
        if run is not None:
            # A contiguous range (the engine streaming a big weight in chunks of rows):
            # one small mapping of just those rows, unmapped when the caller drops the array.
            r0, r1 = run
            if self.use_mmap and (r1 - r0) * row_bytes >= MMAP_MIN_BYTES:
                buf = self._map(entry, r0 * row_bytes, (r1 - r0) * row_bytes)
                if buf is not None:
                    return decode_rows(entry, buf, r1 - r0).reshape(rows.shape + row_shape)
        uniq, inverse = np.unique(flat, return_inverse=True)
        buf = np.empty((len(uniq),) + row_shape, dtype=entry.dtype.newbyteorder("<"))
        raw = buf.reshape(-1).view(np.uint8)
        # One positioned read per run of consecutive row numbers.
        cuts = np.flatnonzero(np.diff(uniq) != 1) + 1
        runs = zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(uniq)]))) if len(uniq) else ()
        for start, stop in runs:
            dest = raw[start * row_bytes:stop * row_bytes]
            offset = entry.offset + int(uniq[start]) * row_bytes
            if self._pread(entry, dest, offset) != len(dest):
                raise WeightsError(f"tensor {entry.name!r} in {self.path}: short read of rows "
                                   f"{int(uniq[start])}..{int(uniq[stop - 1])} (file truncated?)")
        out = buf if np.array_equal(uniq, flat) else buf[inverse.reshape(-1)]
        out = out.reshape(rows.shape + row_shape)
        return out if out.dtype == entry.dtype else out.astype(entry.dtype)

    def check(self, entry: TensorEntry) -> None:
        """Stream the tensor through CRC-32 in CHUNK_BYTES pieces, keeping none of it."""
        chunk = np.empty(min(CHUNK_BYTES, entry.nbytes), dtype=np.uint8)
        crc, done = 0, 0
        while done < entry.nbytes:
            piece = chunk[:min(len(chunk), entry.nbytes - done)]
            if self._pread(entry, piece, entry.offset + done) != len(piece):
                raise WeightsError(f"tensor {entry.name!r} in {self.path}: read stopped at byte {done} "
                                   f"of {entry.nbytes} at offset {entry.offset} (file truncated?)")
            crc = crc32(piece, crc)
            done += len(piece)
        if crc != entry.crc32:
            raise WeightsError(f"tensor {entry.name!r} in {self.path}: checksum mismatch "
                               f"(crc32 {crc:08x}, index says {entry.crc32:08x}): the file is corrupted")
        self._verified.add(entry.name)

    # --- the places that touch the file descriptor ---------------------------------------

    def _map(self, entry: TensorEntry, begin: int = 0, nbytes: int | None = None):
        """A read-only memoryview of the tensor's bytes [begin, begin + nbytes) (default: all)
        in a fresh mapping, or None when the file cannot be mapped (then the caller reads it).
        The mapping reaches XNN_SLACK bytes further where the file has them, so XNNPACK (which
        may read 16 bytes past an input) can use it without a padded copy."""
        nbytes = entry.nbytes - begin if nbytes is None else nbytes
        fd = self._fd
        if fd is None:
            raise WeightsError(f"tensor {entry.name!r}: weights file {self.path} is closed")
        try:
            size = os.fstat(fd).st_size
        except OSError as e:
            raise WeightsError(f"tensor {entry.name!r} in {self.path}: cannot stat the file: {e}") from e
        if entry.offset + entry.nbytes > size:
            raise WeightsError(f"tensor {entry.name!r} in {self.path}: needs bytes {entry.offset}.."
                               f"{entry.offset + entry.nbytes}, the file now has {size} (truncated?)")
        first = entry.offset + begin
        start = first - first % mmap.ALLOCATIONGRANULARITY
        end = min(size, first + nbytes + XNN_SLACK)
        try:
            mm = mmap.mmap(fd, end - start, offset=start, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            self.use_mmap = False          # e.g. a pipe or a filesystem without mmap
            return None
        return memoryview(mm)[first - start:first - start + nbytes]

    # --- the one place that reads through the file descriptor -----------------------------

    def _pread(self, entry: TensorEntry, dest: np.ndarray, offset: int) -> int:
        """Fill ``dest`` (1-D uint8) from ``offset``; return the bytes read (less only at EOF)."""
        fd = self._fd
        if fd is None:
            raise WeightsError(f"tensor {entry.name!r}: weights file {self.path} is closed")
        view = memoryview(dest)
        got = 0
        try:
            while got < len(view):
                # preadv may return less than asked (Linux caps one call near 2 GiB).
                if hasattr(os, "preadv"):
                    n = os.preadv(fd, [view[got:]], offset + got)
                else:  # platforms without preadv: one copy
                    data = os.pread(fd, len(view) - got, offset + got)
                    n = len(data)
                    view[got:got + n] = data
                if n == 0:
                    break
                got += n
        except OSError as e:
            raise WeightsError(f"tensor {entry.name!r} in {self.path}: read failed at offset "
                               f"{offset + got}: {e}") from e
        return got


def _touch_pages(buf) -> None:
    """Fault every page of a mapped buffer in (one byte read per page)."""
    a = np.frombuffer(buf, dtype=np.uint8)
    if a.size:
        int(a[::PAGE].sum())


def is_mapped(a: np.ndarray) -> bool:
    """Whether ``a``'s memory is a file mapping (so it must not outlive the file's contents)."""
    base = a
    while base is not None:
        if isinstance(base, mmap.mmap) or (isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)):
            return True
        base = getattr(base, "base", None) if not isinstance(base, memoryview) else base.obj
    return False
