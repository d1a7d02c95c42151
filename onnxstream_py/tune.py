"""Measure the native backend's kernel choices for a model on this machine, ahead of time.

A run with ``kernel_choice="measure"`` times every candidate kernel of each new op shape it
meets and stores the winners beside the model (kernel_choices.json). What XNNPACK costs
depends on whether its packed operators are cached across runs, so the model is run in both
modes: streaming (packing paid per run, as with the disk providers) and with the operator
cache (as with the Ram provider); and a third time with DiskNoCache, whose weights above
max_weight_chunk_bytes arrive in chunks of rows (a Conv's cost differs then: Winograd
transforms smaller blocks). Each run meets the input layouts that the earlier choices
of the same run produce, which are the layouts later runs will see.

The cached pass holds every prepared operator: the SD 1.5 UNet's (Winograd's transformed
weights are 4x the weights) took 9.2 GiB. So its operator cache is bounded by
``cache_bytes``, by default half the memory the system has available
(MemAvailable); ops past the budget run streamed and keep their streamed choice, and below
CACHED_PASS_MIN_BYTES the pass is skipped (a Raspberry Pi: nothing would be cached anyway).
"""
from __future__ import annotations

from . import kernel_choice
from .model import Model
from .options import RunOptions

# a cached pass with less operator cache than this is not run (see the module text)
CACHED_PASS_MIN_BYTES = 256 << 20


def available_memory_bytes() -> int | None:
    """The system's MemAvailable (Linux /proc/meminfo), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_cache_bytes() -> int:
    avail = available_memory_bytes()
    return 1 << 62 if avail is None else avail // 2


def runs_cached_pass(cache_bytes: int) -> bool:
    return cache_bytes >= CACHED_PASS_MIN_BYTES


def tune_model(model_dir: str, feeds: dict, threads: int | None = None, provider: str = "prefetch",
               max_weight_chunk_bytes: int | None = None, cache_bytes: int | None = None) -> str | None:
    """Measure and store the choices; returns the path written (None if read-only).
    ``max_weight_chunk_bytes``: the chunk size the chunked pass measures (default: RunOptions').
    ``cache_bytes``: the cached pass's operator cache (default: default_cache_bytes(); below
    CACHED_PASS_MIN_BYTES that pass is skipped)."""
    chunk = {} if max_weight_chunk_bytes is None else {"max_weight_chunk_bytes": int(max_weight_chunk_bytes)}
    cache = default_cache_bytes() if cache_bytes is None else int(cache_bytes)
    path = None
    kernel_choice.clear()                  # re-measure every shape (stale choices are not loaded)
    # streaming whole weights, then with the operator cache, then streaming weights larger than
    # max_weight_chunk_bytes in chunks of rows (DiskNoCache): Conv keys tell the three apart
    passes = [(0, provider)] + ([(cache, provider)] if runs_cached_pass(cache) else []) + [(0, "nocache")]
    for cache_budget, prov in passes:
        opts = RunOptions(threads=threads, backend="native", kernel_choice="measure",
                          operator_cache_bytes=cache_budget, **chunk)
        with Model(model_dir, provider=prov, options=opts) as model:
            model.run(feeds)
            path = model.save_kernel_choices()
    return path
