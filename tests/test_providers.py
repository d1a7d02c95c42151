"""Tests of weights_providers: exact data, plan/read-ahead semantics, budgets, errors, threads.

The read-ahead rules are tested on ReadAhead directly with a fake fetch (deterministic:
the test decides when the thread has caught up via ``wait_idle``); the providers are tested
on real weights files written with WeightsWriter into tmp_path.
"""
from __future__ import annotations

import os
import re
import threading
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from weights_providers import (DiskNoCache, DiskPrefetch, Ram, WeightsError, WeightsProvider,
                               open_provider)
from weights_providers.format import WEIGHTS_FILE, WeightsIndex, WeightsWriter
from weights_providers.readahead import ReadAhead

BUDGET = 64 * 1024  # small read-ahead budget used with the test files
DOC = Path(__file__).resolve().parent.parent / "docs" / "PROVIDERS.md"


def make_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    return {
        "conv/weight.0:x": rng.standard_normal((33, 17)).astype(np.float32),
        "f16": rng.standard_normal((5, 7, 3)).astype(np.float16),
        "ids": rng.integers(-2**40, 2**40, size=19, dtype=np.int64),
        "mask": rng.random((4, 13)) > 0.5,
        "scalar": np.array(-2.5, dtype=np.float32),
        "empty": np.zeros((0, 8), dtype=np.float32),
        "big": rng.standard_normal((128, 256)).astype(np.float32),  # 128 KiB > BUDGET
        "tail": rng.standard_normal((13, 19)).astype(np.float32),
    }


def write_weights(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    writer = WeightsWriter(str(path), [(n, a.dtype, a.shape) for n, a in tensors.items()])
    for name, arr in tensors.items():
        writer.write(name, arr)
    writer.close()
    return path


@pytest.fixture
def tensors():
    return make_tensors()


@pytest.fixture
def wfile(tmp_path, tensors) -> Path:
    return write_weights(tmp_path / WEIGHTS_FILE, tensors)


PROVIDERS = {
    "nocache": lambda p: DiskNoCache(p),
    "prefetch": lambda p: DiskPrefetch(p, budget_bytes=BUDGET),
    "ram": lambda p: Ram(p),
    "ram-preload": lambda p: Ram(p, preload=True),
    "ram-over-prefetch": lambda p: Ram(DiskPrefetch(p, budget_bytes=BUDGET)),
}


@pytest.fixture(params=sorted(PROVIDERS))
def provider(request, wfile):
    p = PROVIDERS[request.param](wfile)
    yield p
    p.close()


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise identical, same dtype and shape."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def readahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "onnxstream-readahead"]


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


# --- every provider returns exactly the source data -----------------------------------------


def test_all_dtypes_bitwise_identical(provider, tensors):
    order = list(tensors)
    provider.plan(order)
    for name in order:
        got = provider.get(name)
        assert same(got, tensors[name]), name
        provider.release(name)


@pytest.mark.parametrize("sequence", [
    "in-order", "out-of-order", "repeated", "unplanned", "restarted", "no-plan"])
def test_request_sequences(provider, tensors, sequence):
    plan = ["f16", "conv/weight.0:x", "big", "ids", "f16", "tail", "scalar"]
    requests = {
        "in-order": [plan],
        "out-of-order": [["ids", "tail", "f16", "conv/weight.0:x", "big", "scalar", "f16"]],
        "repeated": [plan + ["f16", "f16"]],
        "unplanned": [["f16", "mask", "conv/weight.0:x", "empty", "big", "ids", "f16", "tail", "mask", "scalar"]],
        "restarted": [plan, plan[:3], plan],
        "no-plan": [plan],
    }[sequence]
    if sequence != "no-plan":
        provider.plan(plan)
    for i, run in enumerate(requests):
        if i:
            provider.restart()
        for name in run:
            assert same(provider.get(name), tensors[name]), (sequence, name)
            provider.release(name)


def test_model_directory_path_and_index(wfile, tensors):
    for kind in ("nocache", "prefetch"):
        with open_provider(kind, wfile.parent) as p:
            assert p.path == str(wfile)
            assert isinstance(p.index, WeightsIndex) and list(p.index.entries) == list(tensors)
            assert same(p.get("tail"), tensors["tail"])


def test_unknown_name(provider):
    with pytest.raises(WeightsError, match="nope"):
        provider.get("nope")


def test_prefetch_plan_with_unknown_name(wfile):
    with DiskPrefetch(wfile) as p, pytest.raises(WeightsError, match="missing"):
        p.plan(["f16", "missing"])


# --- get_rows --------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [
    np.array([0, 5, 5, 32, -1], dtype=np.int64),
    np.array([[3, 2], [1, 0]], dtype=np.int64),
    np.array(7, dtype=np.int64),
    np.array([], dtype=np.int64),
    np.arange(33, dtype=np.int64),
    np.array([10, 11, 12, 20, 21], dtype=np.int32),
])
def test_get_rows_equals_take(provider, tensors, rows):
    for name in ("conv/weight.0:x", "f16", "ids", "mask", "big"):
        n = len(tensors[name])
        fitted = np.where(rows < 0, rows % n - n, rows % n).astype(rows.dtype)  # keep negatives
        got = provider.get_rows(name, fitted)
        assert same(got, np.take(tensors[name], fitted, axis=0)), (name, fitted)


def test_get_rows_out_of_range(provider):
    with pytest.raises(IndexError):
        provider.get_rows("tail", np.array([13], dtype=np.int64))
    with pytest.raises(IndexError):
        provider.get_rows("tail", np.array([-14], dtype=np.int64))


def test_base_default_get_rows_and_hooks():
    class Dict(WeightsProvider):
        def __init__(self, d):
            self.d = d

        def get(self, name):
            return self.d[name]

    table = np.arange(20.0).reshape(10, 2)
    with Dict({"t": table}) as p:
        p.plan(["t"]), p.restart(), p.release("t")
        assert same(p.get_rows("t", np.array([[9, -10]])), table[[[9, 0]]])
    with pytest.raises(TypeError):
        WeightsProvider()  # get is abstract


@pytest.mark.parametrize("kind", ["nocache", "prefetch"])
def test_disk_get_rows_reads_only_rows(tmp_path, kind):
    table = np.random.default_rng(0).standard_normal((32768, 64)).astype(np.float32)  # 8 MiB
    path = write_weights(tmp_path / WEIGHTS_FILE, {"embed": table})
    rows = np.array([[49, 7, 7, 32767, 0] + list(range(100, 172))], dtype=np.int64)  # 77 rows
    with open_provider(kind, path) as p:
        tracemalloc.start()
        try:
            got = p.get_rows("embed", rows)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert same(got, table[rows])
        assert peak < table.nbytes // 4, f"get_rows allocated {peak} bytes for a {table.nbytes}-byte table"


def test_prefetch_get_rows_of_planned_table_stops_reading_it_ahead(wfile, tensors):
    with DiskPrefetch(wfile, budget_bytes=10 * 2**20) as p:
        p.plan(["f16", "big", "tail"])
        rows = np.array([1, 2], dtype=np.int64)
        for _ in range(2):
            p.readahead.wait_idle()
            assert same(p.get("f16"), tensors["f16"])
            assert same(p.get_rows("big", rows), tensors["big"][rows])
            assert same(p.get("tail"), tensors["tail"])
            p.restart()
        p.readahead.wait_idle()
        # "big" is excluded now: only f16 and tail are held ahead.
        assert p.readahead.buffered_bytes == tensors["f16"].nbytes + tensors["tail"].nbytes


# --- budget ---------------------------------------------------------------------------------


def run_with_compute(p: DiskPrefetch, order, tensors):
    """One run where each op takes long enough for the read-ahead to fill up."""
    for name in order:
        p.readahead.wait_idle()
        assert p.readahead.buffered_bytes <= max(p.budget_bytes, tensors[name].nbytes)
        assert same(p.get(name), tensors[name])
        p.release(name)


def test_prefetch_budget_respected(wfile, tensors):
    order = [n for n in tensors if n != "big"] * 3
    with DiskPrefetch(wfile, budget_bytes=4096) as p:
        p.plan(order)
        run_with_compute(p, order, tensors)
        assert 0 < p.peak_buffered_bytes <= 4096


def test_prefetch_oversized_tensor_read_alone(wfile, tensors):
    order = ["tail", "big", "f16", "big", "ids"]
    with DiskPrefetch(wfile, budget_bytes=BUDGET) as p:
        p.plan(order)
        p.readahead.wait_idle()
        # "big" does not fit next to "tail": it waits until it is the next tensor.
        assert p.readahead.buffered_bytes == tensors["tail"].nbytes
        run_with_compute(p, order, tensors)
        assert p.peak_buffered_bytes == tensors["big"].nbytes > BUDGET


# --- errors ---------------------------------------------------------------------------------


def test_truncated_file_at_open(wfile):
    index = WeightsIndex.read(str(wfile))
    last = max(index.entries.values(), key=lambda e: e.offset)
    os.truncate(wfile, last.offset + last.nbytes - 3)
    for kind in ("nocache", "prefetch", "ram"):
        with pytest.raises(WeightsError) as e:
            open_provider(kind, wfile)
        assert repr(last.name) in str(e.value) and str(wfile) in str(e.value)


@pytest.mark.parametrize("kind", ["nocache", "prefetch", "ram"])
def test_truncated_after_open(wfile, kind):
    with open_provider(kind, wfile) as p:
        entry = p.index["big"]
        os.truncate(wfile, entry.offset + 100)
        with pytest.raises(WeightsError, match=r"'big'.*truncated") as e:
            p.get("big")
        assert str(wfile) in str(e.value)
        with pytest.raises(WeightsError, match=r"'big'.*truncated"):
            p.get_rows("big", np.array([5], dtype=np.int64))


@pytest.mark.parametrize("kind", ["nocache", "prefetch", "ram"])
def test_flipped_byte_is_a_checksum_error(wfile, tensors, kind):
    entry = WeightsIndex.read(str(wfile))["big"]
    flip_byte(wfile, entry.offset + entry.nbytes // 2)
    with open_provider(kind, wfile) as p:
        with pytest.raises(WeightsError, match=r"'big'.*checksum") as e:
            p.get("big")
        assert str(wfile) in str(e.value)
        with pytest.raises(WeightsError, match=r"'big'.*checksum"):
            p.get_rows("big", np.array([0], dtype=np.int64))  # rows 0 are intact, the table is not
        assert same(p.get("tail"), tensors["tail"])
    with open_provider(kind, wfile, verify=False) as p:
        assert p.get("big").shape == tensors["big"].shape


def test_error_in_thread_surfaces_from_get(wfile, tensors):
    entry = WeightsIndex.read(str(wfile))["f16"]
    flip_byte(wfile, entry.offset)
    with DiskPrefetch(wfile, budget_bytes=10 * 2**20) as p:
        p.plan(["tail", "f16", "ids"])
        p.readahead.wait_idle()  # the thread has read (and failed on) f16
        assert same(p.get("tail"), tensors["tail"])
        with pytest.raises(WeightsError, match=r"'f16'.*checksum") as e:
            p.get("f16")
        assert str(wfile) in str(e.value)
        assert same(p.get("ids"), tensors["ids"])


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"not-weights" + b[11:], "not an onnxstream weights file"),
    (lambda b: b.replace(b" float16 ", b" float99 ", 1), "header line .*float99"),
    (lambda b: b.replace(b"\nend\n", b"\nxnd\n", 1), "(header line|no 'end')"),
    (lambda b: b[:40], "truncated header"),
])
def test_corrupted_header(wfile, damage, message):
    wfile.write_bytes(damage(wfile.read_bytes()))
    for kind in ("nocache", "prefetch", "ram"):
        with pytest.raises(WeightsError, match=message) as e:
            open_provider(kind, wfile)
        assert str(wfile) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="cannot read"):
        DiskNoCache(tmp_path / "nothing.bin")


# --- threads --------------------------------------------------------------------------------


def test_close_joins_thread(wfile):
    before = len(readahead_threads())
    p = DiskPrefetch(wfile)
    p.plan(["f16", "big"])
    assert len(readahead_threads()) == before + 1
    p.close()
    p.close()  # idempotent
    assert len(readahead_threads()) == before
    with pytest.raises(WeightsError, match="closed"):
        p.get("f16")
    with Ram(DiskPrefetch(wfile)) as r:
        r.plan(["f16"])
        r.get("f16")
    assert len(readahead_threads()) == before


def test_unclosed_prefetch_is_collected(wfile):
    import gc
    before = len(readahead_threads())
    p = DiskPrefetch(wfile)
    p.plan(["f16"])
    del p
    gc.collect()
    assert len(readahead_threads()) == before


# --- Ram --------------------------------------------------------------------------------------


class Counting(WeightsProvider):
    """Serves a dict and records every call (to see what Ram asks of its inner provider)."""

    def __init__(self, tensors):
        self.tensors, self.gets, self.plans, self.closed = tensors, [], [], False

    def get(self, name):
        self.gets.append(name)
        return self.tensors[name]

    def plan(self, order):
        self.plans.append(list(order))

    def close(self):
        self.closed = True


def test_ram_reads_each_tensor_once(tensors):
    inner = Counting(tensors)
    order = ["f16", "ids", "f16", "tail"]
    with Ram(inner) as r:
        r.plan(order)
        assert inner.plans == [["f16", "ids", "tail"]]
        for run in range(3):
            if run:
                r.restart()
            for name in order:
                got = r.get(name)
                assert same(got, tensors[name]) and not got.flags.writeable
                r.release(name)
        assert inner.gets == ["f16", "ids", "tail"]
        assert inner.plans[-1] == []  # nothing left to read from the inner provider
        assert tensors["f16"].flags.writeable  # the caller's arrays are left alone
        assert r.cached_bytes == sum(tensors[n].nbytes for n in ("f16", "ids", "tail"))
        assert same(r.get_rows("ids", np.array([1])), tensors["ids"][[1]])  # from the cache
        assert same(r.get_rows("mask", np.array([1])), tensors["mask"][[1]])
        assert inner.gets == ["f16", "ids", "tail", "mask"]  # via the inner's get_rows ...
        assert r.cached_bytes == sum(tensors[n].nbytes for n in ("f16", "ids", "tail"))  # ... not kept
    assert inner.closed


def test_ram_preload(wfile, tensors):
    with Ram(wfile, preload=True) as r:
        os.truncate(wfile, 0)  # everything is in RAM already
        for name in tensors:
            assert same(r.get(name), tensors[name])
    with pytest.raises(TypeError, match="preload"):
        Ram(Counting(tensors), preload=True)
    with pytest.raises(TypeError):
        Ram(42)


# --- factory and docs -------------------------------------------------------------------------


def test_open_provider_kinds(wfile):
    for kind, cls in [("nocache", DiskNoCache), ("DiskNoCache", DiskNoCache), ("prefetch", DiskPrefetch),
                      ("DISKPREFETCH", DiskPrefetch), ("Ram", Ram)]:
        with open_provider(kind, wfile) as p:
            assert type(p) is cls
    with open_provider("prefetch", wfile, budget_bytes=123) as p:
        assert p.budget_bytes == 123
    with pytest.raises(ValueError, match="nocache.*prefetch.*ram"):
        open_provider("mmap", wfile)


def test_doc_example_runs():
    text = DOC.read_text()
    blocks = re.findall(r"<!-- example: custom-provider -->\s*```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "docs/PROVIDERS.md lost its custom-provider example"
    namespace = {"__name__": "providers_doc_example"}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)
    assert issubclass(namespace["NpzProvider"], WeightsProvider)
    assert "onnxstream_py.Model(" in text and "provider=" in text


# --- ReadAhead rules, with a fake fetch ------------------------------------------------------


@dataclass(frozen=True)
class Item:
    name: str
    nbytes: int


class FakeSource:
    """fetch() for ReadAhead: records (name, thread) and can block or fail on chosen names."""

    def __init__(self, fail=(), block=()):
        self.calls: list[tuple[str, bool]] = []
        self.fail, self.block = set(fail), set(block)
        self.release = threading.Event()
        self.started = threading.Event()

    def fetch(self, item: Item) -> np.ndarray:
        self.calls.append((item.name, threading.current_thread() is not threading.main_thread()))
        if item.name in self.block:
            self.started.set()
            self.release.wait()
        if item.name in self.fail:
            raise OSError(f"disk on fire reading {item.name}")
        return np.full(item.nbytes, ord(item.name[0]), dtype=np.uint8)

    def names(self, by_thread=None):
        return [n for n, t in self.calls if by_thread is None or t == by_thread]


def items(spec: str, nbytes: int = 10) -> list[Item]:
    return [Item(n, nbytes) for n in spec.split()]


@pytest.fixture
def ra_factory():
    made = []

    def make(budget, **kw):
        src = FakeSource(**kw)
        ra = ReadAhead(src.fetch, budget)
        made.append(ra)
        return ra, src

    yield make
    for ra in made:
        ra.close()


def take(ra, name, nbytes=10):
    arr = ra.take(Item(name, nbytes))
    assert arr[0] == ord(name[0]) and arr.nbytes == nbytes
    return arr


def test_readahead_in_order_and_repeated(ra_factory):
    ra, src = ra_factory(1000)
    ra.plan(items("a b a c"))
    ra.wait_idle()
    assert src.names(by_thread=True) == ["a", "b", "a", "c"]
    for n in "abac":
        take(ra, n)
    assert src.names(by_thread=False) == [] and ra.buffered_bytes == 0


def test_readahead_budget(ra_factory):
    ra, src = ra_factory(25)
    ra.plan(items("a b c d e"))
    ra.wait_idle()
    assert src.names() == ["a", "b"] and ra.buffered_bytes == 20
    take(ra, "a")
    ra.wait_idle()
    assert src.names() == ["a", "b", "c"]
    for n in "bcde":
        take(ra, n)
        ra.wait_idle()
    assert ra.peak_buffered_bytes == 20 and src.names(by_thread=False) == []


def test_readahead_oversized_item_alone(ra_factory):
    ra, src = ra_factory(25)
    ra.plan([Item("s", 10), Item("B", 100), Item("t", 10)])
    ra.wait_idle()
    assert src.names() == ["s"]
    take(ra, "s")
    ra.wait_idle()
    assert src.names() == ["s", "B"] and ra.buffered_bytes == 100
    take(ra, "B", 100)
    ra.wait_idle()
    take(ra, "t")
    assert ra.peak_buffered_bytes == 100 and src.names(by_thread=False) == []


def test_readahead_out_of_order_resyncs(ra_factory):
    ra, src = ra_factory(1000)
    ra.plan(items("a b c d e"))
    ra.wait_idle()
    take(ra, "c")  # already read ahead: served from the buffer, a and b dropped
    assert ra.buffered_bytes == 20
    take(ra, "d"), take(ra, "e")
    take(ra, "a")  # not in the rest of the plan: read synchronously
    assert src.names(by_thread=True) == list("abcde") and src.names(by_thread=False) == ["a"]


def test_readahead_out_of_order_ahead_of_thread(ra_factory):
    ra, src = ra_factory(0)  # only the next tensor is ever read ahead
    ra.plan(items("a b c d"))
    ra.wait_idle()
    take(ra, "c")  # not read yet: the caller reads it, the thread continues after it
    ra.wait_idle()
    take(ra, "d")
    assert src.names(by_thread=True) == ["a", "d"] and src.names(by_thread=False) == ["c"]
    assert ra.buffered_bytes == 0


def test_readahead_unplanned_and_no_plan(ra_factory):
    ra, src = ra_factory(1000)
    before = len(readahead_threads())
    take(ra, "z")  # no plan: synchronous, no thread
    assert src.names(by_thread=False) == ["z"] and len(readahead_threads()) == before
    ra.plan(items("a b"))
    ra.wait_idle()
    take(ra, "z")  # never planned: does not disturb the read-ahead
    take(ra, "a"), take(ra, "b")
    assert src.names(by_thread=True) == ["a", "b"] and src.names(by_thread=False) == ["z", "z"]


def test_readahead_restart(ra_factory):
    ra, src = ra_factory(1000)
    ra.plan(items("a b c"))
    ra.wait_idle()
    take(ra, "a")
    ra.restart()  # mid-run: b and c are dropped and read again from the start
    assert ra.buffered_bytes == 0
    ra.wait_idle()
    for n in "abc":
        take(ra, n)
    assert src.names(by_thread=True) == list("abcabc")


def test_readahead_waits_for_inflight_fetch(ra_factory):
    ra, src = ra_factory(1000, block={"a"})
    ra.plan(items("a b"))
    assert src.started.wait(5)
    result = []
    consumer = threading.Thread(target=lambda: result.append(ra.take(Item("a", 10))))
    consumer.start()
    consumer.join(0.05)
    assert consumer.is_alive()  # waiting on the condition for the thread's read
    src.release.set()
    consumer.join(5)
    assert not consumer.is_alive() and result[0][0] == ord("a")
    assert src.names() == ["a", "b"] or src.names() == ["a"]  # a read exactly once


def test_readahead_error_surfaces_from_take(ra_factory):
    ra, src = ra_factory(1000, fail={"b"})
    ra.plan(items("a b c"))
    ra.wait_idle()
    take(ra, "a")
    with pytest.raises(WeightsError, match="'b'.*disk on fire"):
        ra.take(Item("b", 10))
    take(ra, "c")


def test_readahead_exclude(ra_factory):
    ra, src = ra_factory(1000)
    ra.exclude("t")
    ra.plan(items("a t b"))
    ra.wait_idle()
    assert src.names() == ["a", "b"]
    take(ra, "a")
    assert ra.claim("t") == (False, None)
    take(ra, "b")


def test_readahead_close_and_bad_budget(ra_factory):
    ra, src = ra_factory(1000)
    before = len(readahead_threads())
    ra.plan(items("a b"))
    ra.close()
    assert len(readahead_threads()) == before
    with pytest.raises(WeightsError, match="closed"):
        ra.take(Item("a", 10))
    with pytest.raises(ValueError):
        ReadAhead(src.fetch, -1)


@pytest.mark.parametrize("mode,caught_later", [("always", True), ("first", False)])
def test_verify_modes_first_read_and_later_reads(tmp_path, mode, caught_later):
    """Both modes catch a corruption present at the first read; only "always" re-checks
    bytes that change after a tensor was verified once."""
    import numpy as np
    from weights_providers import DiskNoCache, WeightsError
    from weights_providers.format import WeightsIndex, WeightsWriter
    a = np.arange(4096, dtype=np.float32)
    path = str(tmp_path / "w.bin")
    w = WeightsWriter(path, [("a", a.dtype, a.shape)])
    w.write("a", a)
    w.close()
    entry = WeightsIndex.read(path)["a"]

    def flip():
        with open(path, "r+b") as f:
            f.seek(entry.offset + 100)
            byte = f.read(1)
            f.seek(entry.offset + 100)
            f.write(bytes([byte[0] ^ 0x40]))

    flip()
    with DiskNoCache(path, verify=mode) as p:
        with pytest.raises(WeightsError, match="checksum"):
            p.get("a")
    flip()                                   # restore
    with DiskNoCache(path, verify=mode) as p:
        np.testing.assert_array_equal(p.get("a"), a)
        flip()
        if caught_later:
            with pytest.raises(WeightsError, match="checksum"):
                p.get("a")
        else:
            assert not np.array_equal(p.get("a"), a)   # trusted after its first check


def test_verify_mode_never_and_bad_value(tmp_path):
    from weights_providers.tensorfile import verify_mode
    assert verify_mode(True) == "always" and verify_mode(False) == "never"
    with pytest.raises(ValueError, match="verify must be one of"):
        verify_mode("sometimes")


# --- memory-mapped reads ---------------------------------------------------------------

def test_big_tensors_are_mapped_read_only_and_small_ones_copied(wfile, tensors):
    from weights_providers.tensorfile import MMAP_MIN_BYTES, is_mapped
    assert tensors["big"].nbytes >= MMAP_MIN_BYTES > tensors["tail"].nbytes
    for p in (DiskNoCache(wfile), DiskPrefetch(wfile, budget_bytes=BUDGET)):
        with p:
            p.plan(list(tensors))
            for name, want in tensors.items():
                got = p.get(name)
                assert same(got, want)
                assert is_mapped(got) == (want.nbytes >= MMAP_MIN_BYTES)
                if is_mapped(got):
                    assert not got.flags.writeable
                    with pytest.raises(ValueError):
                        got[...] = 0
                p.release(name)
    with DiskNoCache(wfile, use_mmap=False) as p:
        assert not is_mapped(p.get("big")) and same(p.get("big"), tensors["big"])


def test_mapped_read_of_a_file_truncated_after_opening_is_an_error_not_a_crash(wfile, tensors):
    idx = WeightsIndex.read(str(wfile))
    big = idx["big"]
    for verify in ("always", "never"):
        with DiskNoCache(wfile, verify=verify) as p:
            os.truncate(wfile, big.offset + big.nbytes // 2)
            with pytest.raises(WeightsError, match=r"'big'.*truncated"):
                p.get("big")
        write_weights(wfile, tensors)


def test_mapped_read_checks_the_checksum(wfile, tensors):
    idx = WeightsIndex.read(str(wfile))
    big = idx["big"]
    with open(wfile, "r+b") as f:
        f.seek(big.offset + 1000)
        b = f.read(1)
        f.seek(big.offset + 1000)
        f.write(bytes([b[0] ^ 0x55]))
    with DiskNoCache(wfile) as p:
        with pytest.raises(WeightsError, match=r"'big'.*checksum mismatch"):
            p.get("big")


def test_ram_holds_copies_not_mappings(wfile, tensors):
    from weights_providers.tensorfile import is_mapped
    with Ram(DiskNoCache(wfile)) as r:           # a mapping inner provider
        got = r.get("big")
        assert not is_mapped(got) and same(got, tensors["big"])
        os.truncate(wfile, 0)
        assert same(r.get("big"), tensors["big"])  # still readable: no SIGBUS
