"""Measured kernel choice: which implementation of an op is faster for a given shape, here.

Trade-off: nothing is assumed about XNNPACK vs BLAS (it depends on the CPU, the thread count
and the shape); the first time a shape key is seen in a process every candidate is timed on
the real inputs and the fastest is remembered. That first encounter costs a few extra runs of
the op; later ones cost a dict lookup. The result of the winner's timed run is returned, so
no run is wasted on the final answer.

Keys are tuples of str/int/float (nested tuples allowed) and values dicts of str/float, so
the table round-trips through JSON (``table()`` / ``load()``). A Model stores it beside the
converted model (``kernel_choices.json``, per machine fingerprint) and loads it again, so a
shape is measured once per machine, not once per process. Ordinary runs measure nothing:
a shape without a stored choice takes the op's default rule; ``onnxstream tune`` (or
``RunOptions(kernel_choice="measure")``) measures the shapes a run meets and stores them.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from typing import Any, Callable, Mapping

# A candidate whose warm-up run takes longer than this is not run a second time: its
# warm-up time stands as the measurement (warm-up effects are small next to such runs).
WARM_SECONDS = 0.2

_TABLE: dict[tuple, dict] = {}
_FORCED: str | None = None


def _freeze(v):
    return tuple(_freeze(a) for a in v) if isinstance(v, (list, tuple)) else v


def lookup(op_key: tuple) -> str | None:
    """The remembered (or forced) choice for ``op_key``, None if not measured yet."""
    if _FORCED is not None:
        return _FORCED
    entry = _TABLE.get(_freeze(op_key))
    return None if entry is None else entry["choice"]


def run_chosen(op_key: tuple, candidates: Mapping[str, Callable[[], Any]], measure: bool = True,
               default: str | None = None) -> Any:
    """Run the chosen candidate for ``op_key`` and return its result. For a new ``op_key``:
    with ``measure``, time every candidate first (each: one warm-up run, then one timed run;
    a run of WARM_SECONDS or more is its own measurement, and the first candidate's is
    repeated if it lost) and remember the fastest; without, run ``default`` (the op's rule)
    and remember nothing."""
    choice = lookup(op_key)
    if choice is None and not measure:
        choice = default if default is not None else next(iter(candidates))
    if choice is not None and choice not in candidates:
        # forced("xnnpack") and the like name other ops' kernels; and the candidates of one key
        # can depend on the run: the op's default then
        choice = default if default is not None else next(iter(candidates))
    if choice is not None:
        return candidates[choice]()
    seconds: dict[str, float] = {}
    best_name, best_result = None, None
    for name, fn in candidates.items():
        t0 = time.perf_counter()
        result = fn()
        t = time.perf_counter() - t0
        if t < WARM_SECONDS:
            t0 = time.perf_counter()
            result = fn()
            t = time.perf_counter() - t0
        seconds[name] = t
        if best_name is None or t < seconds[best_name]:
            best_name, best_result = name, result
        del result
    # The first candidate's single slow run also paid what the op meets first: its weight's
    # pages faulted in, or read back from disk when the page cache lost them (a 44 MB UNet
    # weight: 130 ms from disk, 9 ms from the cache, measured here), scratch mapped. Had it
    # lost, it is timed once more, warm.
    first = next(iter(candidates))
    if best_name != first and seconds[first] >= WARM_SECONDS:
        t0 = time.perf_counter()
        result = candidates[first]()
        t = time.perf_counter() - t0
        seconds[first] = min(seconds[first], t)
        if t < seconds[best_name]:
            best_name, best_result = first, result
        del result
    remember(op_key, best_name, seconds)
    return best_result


def choose(op_key: tuple, candidates: Mapping[str, Callable[[], Any]]) -> str:
    """The faster candidate's name for ``op_key`` (measured on first use, then remembered)."""
    if lookup(op_key) is None:
        run_chosen(op_key, candidates)
    return lookup(op_key)


def remember(op_key: tuple, choice: str, seconds: Mapping[str, float] | None = None) -> None:
    _TABLE[_freeze(op_key)] = {"choice": choice, "seconds": dict(seconds or {})}


def table() -> list[dict]:
    """Every remembered choice as JSON-ready dicts: {"key": [...], "choice": ..., "seconds": {...}}."""
    def thaw(v):
        return [thaw(a) for a in v] if isinstance(v, tuple) else v
    return [{"key": thaw(k), **v} for k, v in _TABLE.items()]


def load(entries: list[dict]) -> None:
    """Add the choices of ``table()``'s output (e.g. read back from JSON)."""
    for e in entries:
        remember(e["key"], e["choice"], e.get("seconds"))


def clear() -> None:
    _TABLE.clear()


# ---------------------------------------------------------------- on disk, beside the model

CHOICES_FILE = "kernel_choices.json"
FILE_FORMAT = 1


def machine_fingerprint() -> str:
    """What makes a measurement valid elsewhere: CPU model, architecture and core count."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "cpu model", "hardware")):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.machine()}|{model or platform.processor()}|{os.cpu_count()}"


def load_file(model_dir: str) -> int:
    """Load this machine's stored choices for the model in ``model_dir``; returns how many."""
    path = os.path.join(model_dir, CHOICES_FILE)
    try:
        with open(path) as f:
            data = json.load(f)
        entries = data["machines"].get(machine_fingerprint(), []) if data.get("format") == FILE_FORMAT else []
        load(entries)
        return len(entries)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable kernel choices ({e}); delete it and run `onnxstream tune`") from None


def save_file(model_dir: str) -> str:
    """Store this process's choices for this machine beside the model (other machines' kept)."""
    path = os.path.join(model_dir, CHOICES_FILE)
    data = {"format": FILE_FORMAT, "machines": {}}
    try:
        with open(path) as f:
            old = json.load(f)
        if old.get("format") == FILE_FORMAT:
            data["machines"] = dict(old.get("machines", {}))
    except (OSError, ValueError):
        pass
    data["machines"][machine_fingerprint()] = table()
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def forced(choice: str):
    """Within the block every op takes ``choice`` (tests and benchmarks), measuring nothing; an
    op without a candidate of that name takes its default."""
    global _FORCED
    previous, _FORCED = _FORCED, choice
    try:
        yield
    finally:
        _FORCED = previous
