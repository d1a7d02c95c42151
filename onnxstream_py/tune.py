"""Measure the native backend's kernel choices for a model on this machine, ahead of time.

A run with ``kernel_choice="measure"`` times every candidate kernel of each new op shape it
meets and stores the winners beside the model (kernel_choices.json). What XNNPACK costs
depends on whether its packed operators are cached across runs, so the model is run in both
modes: streaming (packing paid per run, as with the disk providers) and with the operator
cache (as with the Ram provider); and a third time with DiskNoCache, whose weights above
max_weight_chunk_bytes arrive in chunks of rows (a Conv's cost differs then: Winograd
transforms smaller blocks). Each run meets the input layouts that the earlier choices
of the same run produce, which are the layouts later runs will see.
"""
from __future__ import annotations

from . import kernel_choice
from .model import Model
from .options import RunOptions


def tune_model(model_dir: str, feeds: dict, threads: int | None = None, provider: str = "prefetch",
               max_weight_chunk_bytes: int | None = None) -> str | None:
    """Measure and store the choices; returns the path written (None if read-only).
    ``max_weight_chunk_bytes``: the chunk size the chunked pass measures (default: RunOptions')."""
    chunk = {} if max_weight_chunk_bytes is None else {"max_weight_chunk_bytes": int(max_weight_chunk_bytes)}
    path = None
    kernel_choice.clear()                  # re-measure every shape (stale choices are not loaded)
    # streaming whole weights, then with the operator cache, then streaming weights larger than
    # max_weight_chunk_bytes in chunks of rows (DiskNoCache): Conv keys tell the three apart
    for cache_bytes, prov in ((0, provider), (None, provider), (0, "nocache")):
        opts = RunOptions(threads=threads, backend="native", kernel_choice="measure",
                          operator_cache_bytes=cache_bytes if cache_bytes is not None else 1 << 62, **chunk)
        with Model(model_dir, provider=prov, options=opts) as model:
            model.run(feeds)
            path = model.save_kernel_choices()
    return path
