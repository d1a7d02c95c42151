"""Weights providers: where the engine gets each weight tensor, one at a time.

A provider needs one method, ``get(name) -> ndarray``; the hooks ``plan``, ``release``,
``restart``, ``close`` and ``get_rows`` are optional (see base.py, docs/PROVIDERS.md).
Built in: DiskNoCache (least memory), DiskPrefetch (bounded read-ahead, the usual choice),
Ram (keeps everything; fastest for repeated runs), Http (a model on a web server: Range
requests, read-ahead, retries; nothing written to disk). Depends on numpy and the stdlib only.
"""
from __future__ import annotations

from .base import WeightsProvider
from .disk import DiskNoCache, DiskPrefetch
from .format import WeightsError, WeightsRetry
from .http import Http
from .ram import Ram

__all__ = ["WeightsProvider", "DiskNoCache", "DiskPrefetch", "Ram", "Http", "WeightsError", "WeightsRetry",
           "open_provider", "PROVIDER_KINDS"]

PROVIDER_KINDS = {
    "nocache": DiskNoCache,
    "disknocache": DiskNoCache,
    "prefetch": DiskPrefetch,
    "diskprefetch": DiskPrefetch,
    "ram": Ram,
    "http": Http,
}


def open_provider(kind: str, path, **kw) -> WeightsProvider:
    """Open a built-in provider by name ("nocache", "prefetch", "ram"; case-insensitive).

    ``path`` is the weights file or the model directory (a URL for "http"); ``kw`` goes to the constructor
    (e.g. ``budget_bytes=`` for prefetch, ``preload=`` for ram, ``verify=`` for all).
    """
    cls = PROVIDER_KINDS.get(str(kind).lower())
    if cls is None:
        raise ValueError(f"unknown weights provider {kind!r}; valid kinds: "
                         f"{', '.join(sorted(PROVIDER_KINDS))}")
    return cls(path, **kw)
