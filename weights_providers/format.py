"""The packed weights file: reader and writer of its index, and checked tensor reads.

One file holds every weight of a converted model, in the order the engine first uses
them, each at a 64-byte aligned offset with a CRC-32. The index is a text header at the
start of the same file, so the file describes itself and a provider needs nothing else.
The full specification is docs/FORMAT.md; this module is its reference implementation.

Layout:
    header (UTF-8 text, H bytes, H a multiple of 64):
        onnxstream-weights <version> <H>\n
        <name> <dtype> <shape> <offset> <nbytes> <crc32 hex8>\n     one line per tensor
        end\n
        padding with b"\n" up to H
    tensor data: little-endian, C order, each at its (absolute, 64-aligned) offset,
        zero bytes between tensors.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterable
from urllib.parse import quote, unquote

import numpy as np

FORMAT_VERSION = 1
MAGIC = "onnxstream-weights"
ALIGN = 64
WEIGHTS_FILE = "weights.bin"
_SAFE = "/:@#()[]+"
_DTYPES = {np.dtype(t).name: np.dtype(t) for t in (
    np.float32, np.float16, np.float64, np.int8, np.uint8, np.int16, np.uint16,
    np.int32, np.uint32, np.int64, np.uint64, np.bool_)}


class WeightsError(Exception):
    """A weight could not be read: names the tensor, the file and the cause."""


class WeightsRetry(WeightsError):
    """Rows of a weight already handed to an op turned out corrupt (a provider that streams a
    tensor checks its checksum when the last rows arrive): the op's output must be discarded
    and the op run again, which reads fresh bytes. Raised from ``get_rows`` or ``finish_rows``."""


def encode_name(name: str) -> str:
    """Percent-encode a tensor name into one whitespace-free, comma-free token.

    The lone tokens ``~`` (an omitted optional input) and ``-`` (an empty list) are
    reserved, so names that are exactly those are fully encoded.
    """
    if name in ("~", "-"):
        return "%" + name.encode().hex().upper()
    return quote(name, safe=_SAFE)


def decode_name(token: str) -> str:
    return unquote(token)


def format_shape(shape: Iterable) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def parse_shape(token: str) -> list[str]:
    if not (token.startswith("[") and token.endswith("]")):
        raise ValueError(f"shape {token!r} is not of the form [d0,d1,...]")
    body = token[1:-1]
    return [d for d in body.split(",")] if body else []


def dtype_from_name(name: str) -> np.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r} (known: {', '.join(sorted(_DTYPES))})") from None


def align_up(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in the weights file."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    crc32: int

    def line(self) -> str:
        return (f"{encode_name(self.name)} {self.dtype.name} {format_shape(self.shape)} "
                f"{self.offset} {self.nbytes} {self.crc32:08x}")


class WeightsIndex:
    """The parsed header of a weights file: ordered {name: TensorEntry}."""

    def __init__(self, path: str, version: int, header_bytes: int, entries: dict[str, TensorEntry],
                 file_size: int | None = None):
        self.path = path
        self.version = version
        self.header_bytes = header_bytes
        self.entries = entries
        self.file_size = file_size

    def __getitem__(self, name: str) -> TensorEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise WeightsError(f"tensor {name!r} is not in weights file {self.path}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def parse(cls, head: bytes, path: str, fetch_more=None, file_size: int | None = None) -> "WeightsIndex":
        """Parse the header from ``head`` (the file's first bytes).

        If ``head`` is shorter than the header, ``fetch_more(total_header_bytes)`` must
        return the whole header (used by providers that read the start of the file first).
        """
        first, nl, _ = head.partition(b"\n")
        parts = first.decode("utf-8", "replace").split()
        if not nl or len(parts) != 3 or parts[0] != MAGIC:
            raise WeightsError(f"{path}: not an onnxstream weights file (first line {first[:60]!r})")
        try:
            version, header_bytes = int(parts[1]), int(parts[2])
        except ValueError:
            raise WeightsError(f"{path}: malformed first line {first[:60]!r}") from None
        if version != FORMAT_VERSION:
            raise WeightsError(f"{path}: weights format version {version}, this reader knows {FORMAT_VERSION}")
        if len(head) < header_bytes:
            if fetch_more is None:
                raise WeightsError(f"{path}: truncated header ({len(head)} of {header_bytes} bytes)")
            head = fetch_more(header_bytes)
            if len(head) < header_bytes:
                raise WeightsError(f"{path}: truncated header ({len(head)} of {header_bytes} bytes)")
        text = head[:header_bytes].decode("utf-8", "strict").split("\n")
        entries: dict[str, TensorEntry] = {}
        ended = False
        for lineno, line in enumerate(text[1:], start=2):
            if not line.strip():
                continue
            if line == "end":
                ended = True
                break
            f = line.split()
            try:
                if len(f) != 6:
                    raise ValueError(f"expected 6 fields, got {len(f)}")
                name = decode_name(f[0])
                dtype = dtype_from_name(f[1])
                shape = tuple(int(d) for d in parse_shape(f[2]))
                entry = TensorEntry(name, dtype, shape, int(f[3]), int(f[4]), int(f[5], 16))
                if entry.nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                    raise ValueError(f"nbytes {entry.nbytes} does not match {dtype.name}{list(shape)}")
            except ValueError as e:
                raise WeightsError(f"{path}: header line {lineno} ({line[:80]!r}): {e}") from None
            entries[name] = entry
        if not ended:
            raise WeightsError(f"{path}: header has no 'end' line (truncated or corrupted)")
        return cls(path, version, header_bytes, entries, file_size)

    @classmethod
    def read(cls, path: str) -> "WeightsIndex":
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(ALIGN * 16)

                def more(n):
                    f.seek(0)
                    return f.read(n)

                index = cls.parse(head, path, more, size)
        except OSError as e:
            raise WeightsError(f"cannot read weights file {path}: {e}") from None
        for e in index.entries.values():
            if e.offset + e.nbytes > size:
                raise WeightsError(
                    f"weights file {path} is truncated: tensor {e.name!r} needs bytes "
                    f"{e.offset}..{e.offset + e.nbytes}, the file has {size}")
        return index


_crc32 = None


def crc32(data, value: int = 0) -> int:
    """zlib.crc32(data, value), computed by the native extension's carry-less multiply when it
    is built and the CPU has it (onnxstream_py.native.crc32: 12-14 GB/s here, 25-51 with
    AVX-512, against zlib's 4; the same values; scripts/bench_crc.py), else by zlib. Chosen on first use (the
    extension imports this package, so not at import time)."""
    global _crc32
    if _crc32 is None:
        fn = zlib.crc32
        try:
            from onnxstream_py import native
            if native.crc32_fast():
                fn = native.crc32
        except Exception:  # noqa: BLE001  extension not built / other platform: zlib is the twin
            pass
        _crc32 = fn
    return _crc32(data, value)


def decode_tensor(entry: TensorEntry, buf, path: str, verify: bool = True) -> np.ndarray:
    """Turn ``buf`` (exactly ``entry.nbytes`` bytes, writable) into the tensor, checking it."""
    if len(buf) != entry.nbytes:
        raise WeightsError(f"tensor {entry.name!r} in {path}: read {len(buf)} of {entry.nbytes} bytes "
                           f"at offset {entry.offset} (file truncated?)")
    if verify:
        crc = crc32(buf)
        if crc != entry.crc32:
            raise WeightsError(f"tensor {entry.name!r} in {path}: checksum mismatch "
                               f"(crc32 {crc:08x}, index says {entry.crc32:08x}): the file is corrupted")
    arr = np.frombuffer(buf, dtype=entry.dtype.newbyteorder("<"))
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.astype(entry.dtype)
    return arr.reshape(entry.shape)


def row_run(flat: np.ndarray) -> tuple[int, int] | None:
    """(r0, r1) when the 1-d integer array ``flat`` is the run r0, r0 + 1, ..., r1 - 1, else None."""
    if flat.ndim != 1 or not flat.size or flat.dtype.kind not in "iu":
        return None
    r0, r1 = int(flat[0]), int(flat[-1]) + 1
    if r1 - r0 != flat.size or (flat.size > 1 and not bool(np.all(np.diff(flat) == 1))):
        return None
    return r0, r1


def decode_rows(entry: TensorEntry, buf, count: int) -> np.ndarray:
    """``count`` rows of ``entry`` from ``buf`` (their little-endian bytes, unchecked)."""
    rows = np.frombuffer(buf, dtype=entry.dtype.newbyteorder("<")).reshape((count,) + entry.shape[1:])
    return rows if rows.dtype == entry.dtype else rows.astype(entry.dtype)


def read_tensor(f: BinaryIO, entry: TensorEntry, path: str, verify: bool = True) -> np.ndarray:
    """Read one tensor from an open weights file (positioned reads, no shared seek state)."""
    buf = bytearray(entry.nbytes)
    n = os.preadv(f.fileno(), [buf], entry.offset) if entry.nbytes else 0
    return decode_tensor(entry, memoryview(buf)[:n] if n != entry.nbytes else buf, path, verify)


class WeightsWriter:
    """Writes a weights file tensor by tensor, then the header (call ``close``).

    Space for the header is reserved up front from the names/shapes given to the
    constructor, so tensors stream to disk one at a time and never all sit in memory.
    """

    def __init__(self, path: str, specs: list[tuple[str, np.dtype, tuple[int, ...]]]):
        self.path = path
        self.specs = [(n, np.dtype(d), tuple(int(x) for x in s)) for n, d, s in specs]
        probe = [TensorEntry(n, d, s, 10**15, int(np.prod(s, dtype=np.int64)) * d.itemsize, 0).line()
                 for n, d, s in self.specs]
        body = "\n".join(probe) + "\nend\n"
        first = f"{MAGIC} {FORMAT_VERSION} {10**12}\n"
        self.header_bytes = align_up(len(first.encode()) + len(body.encode()))
        self.entries: dict[str, TensorEntry] = {}
        self._next = self.header_bytes
        self._order = [n for n, _, _ in self.specs]
        self._expected = {n: (d, s) for n, d, s in self.specs}
        self._f = open(path, "wb")
        self._f.truncate(self.header_bytes)

    def write(self, name: str, array: np.ndarray) -> TensorEntry:
        dtype, shape = self._expected[name]
        a = np.asarray(array, dtype=dtype.newbyteorder("<"))
        if not a.flags.c_contiguous:
            a = a.copy(order="C")
        if a.shape != shape:
            raise ValueError(f"tensor {name!r}: shape {a.shape}, declared {shape}")
        data = a.tobytes() if a.size else b""
        offset = self._next
        self._f.seek(offset)
        self._f.write(data)
        entry = TensorEntry(name, dtype, shape, offset, len(data), zlib.crc32(data))
        self.entries[name] = entry
        self._next = align_up(offset + len(data))
        return entry

    def abort(self) -> None:
        """Stop writing after an error: close the (incomplete, headerless) file."""
        self._f.close()

    def close(self) -> WeightsIndex:
        missing = [n for n in self._order if n not in self.entries]
        if missing:
            raise ValueError(f"tensors declared but never written: {missing[:5]}")
        lines = [f"{MAGIC} {FORMAT_VERSION} {self.header_bytes}"]
        lines += [self.entries[n].line() for n in self._order]
        text = ("\n".join(lines) + "\nend\n").encode()
        assert len(text) <= self.header_bytes, "header reservation too small"
        self._f.seek(0)
        self._f.write(text + b"\n" * (self.header_bytes - len(text)))
        self._f.truncate(max(self._next, self.header_bytes))
        self._f.close()
        return WeightsIndex(self.path, FORMAT_VERSION, self.header_bytes, dict(self.entries))
