"""Model: the public entry point — load a converted model, validate feeds, run it.

``Model(path, provider="prefetch", options=RunOptions())`` reads graph.txt, opens a
WeightsProvider on weights.bin (or takes the one given), checks that the two agree, plans
the execution (reporting every unsupported op at once) and then runs any number of times.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

import weights_providers as wp
from weights_providers import http
from weights_providers.base import WeightsProvider
from weights_providers.format import WEIGHTS_FILE, WeightsError

from .errors import EngineError, InputError
from . import kernel_choice, precision
from .graph import GRAPH_FILE, Graph, read_graph
from .interpreter import Interpreter
from .native_context import NativeContext
from .options import RunOptions
from .plan import Plan, build_plan
from .threads import set_blas_threads

PROVIDERS = ("nocache", "prefetch", "ram")


def open_provider(kind: str, weights_path: str, options: RunOptions) -> wp.WeightsProvider:
    k = kind.lower().replace("_", "").replace("-", "")
    if http.is_url(weights_path):
        # a model on a web server: "prefetch"/"http" read ahead, "nocache" fetches each tensor
        # when asked (budget 0) and big ones by rows as DiskNoCache does, "ram" keeps what it fetched
        verify = "never" if options.verify_checksums in (False, "never") else "always"
        if k in ("http", "prefetch", "diskprefetch"):
            return http.Http(weights_path, budget_bytes=options.prefetch_bytes, verify=verify)
        if k in ("nocache", "disknocache"):
            return http.Http(weights_path, budget_bytes=0, verify=verify, stream=True)
        if k == "ram":
            return wp.Ram(http.Http(weights_path, budget_bytes=0, verify=verify))
    if k in ("nocache", "disknocache"):
        return wp.DiskNoCache(weights_path, verify=options.verify_checksums)
    if k in ("prefetch", "diskprefetch"):
        return wp.DiskPrefetch(weights_path, budget_bytes=options.prefetch_bytes,
                               verify=options.verify_checksums)
    if k == "ram":
        return wp.Ram(wp.DiskNoCache(weights_path, verify=options.verify_checksums, use_mmap=False))
    raise ValueError(f"unknown provider {kind!r}; choose one of {', '.join(PROVIDERS)} "
                     f"or pass a WeightsProvider instance")


def _check_weights_agree(graph: Graph, provider, weights_path: str) -> None:
    index = getattr(provider, "index", None)
    if index is None:
        return
    for name, decl in graph.weights.items():
        if name not in index:
            raise WeightsError(f"weight {name!r} declared in {GRAPH_FILE} is missing from {weights_path}")
        e = index[name]
        if tuple(e.shape) != tuple(decl.shape) or e.dtype != decl.stored_dtype:
            raise WeightsError(f"weight {name!r}: {GRAPH_FILE} declares {decl.stored_dtype.name}"
                               f"{list(decl.shape)}, {weights_path} holds {e.dtype.name}{list(e.shape)}")


class Model:
    """A converted model, ready to run. Use as a context manager or call ``close()``."""

    def __init__(self, path: str, provider: str | wp.WeightsProvider = "prefetch",
                 options: RunOptions | None = None):
        self.path = path
        self.options = options or RunOptions()
        if os.path.isfile(path) and path.lower().endswith(".onnx"):
            raise EngineError(f"{path} is an ONNX file; convert it once with `onnxstream convert {path} OUT_DIR` "
                              f"and load OUT_DIR")
        self.is_url = http.is_url(path)
        if self.is_url:     # a model directory on a web server (weights_providers/http.py)
            fetch = provider.fetch_text if isinstance(provider, http.Http) else http.fetch_text
            graph_url = http.join_url(path, GRAPH_FILE)
            self.graph: Graph = read_graph(graph_url, fetch(graph_url))
        else:
            self.graph = read_graph(os.path.join(path, GRAPH_FILE))
        # what this run computes in ("fp32", "fp16", "w8a8"); "fp16" without FP16 arithmetic -> "fp32"
        self.precision = precision.resolve(self.graph, self.options.precision)
        if self.options.precision == "fp16" and self.precision != "fp16":
            self.options = dataclasses.replace(self.options, precision=self.precision)
        self.plan: Plan = build_plan(self.graph, self.options)
        weights_path = http.join_url(path, WEIGHTS_FILE) if self.is_url else os.path.join(path, WEIGHTS_FILE)
        if isinstance(provider, str):
            if not self.graph.weights and (self.is_url or not os.path.exists(weights_path)):
                self.provider = _NoWeights()
            else:
                self.provider = open_provider(provider, weights_path, self.options)
        else:
            self.provider = provider
        try:
            _check_weights_agree(self.graph, self.provider, weights_path)
        except BaseException:
            self.close()
            raise
        if self.options.threads is not None:
            set_blas_threads(self.options.threads)
        self.ctx = None
        if self.options.backend == "native":
            self.ctx = NativeContext(self.options, self._operator_cache_budget(provider))
            if self.options.kernel_choice != "measure":    # measuring re-measures every shape
                if self.is_url:
                    _load_choices_url(path, provider)
                else:
                    kernel_choice.load_file(path)
        self._interpreter = Interpreter(self.graph, self.plan, self.provider, self.ctx)
        # weights read in chunks of rows are left out of the plan (nothing reads them ahead whole)
        self._streamed = self._interpreter.streamed_weights()
        try:
            self.provider.plan([n for n in self.plan.weight_order if n not in self._streamed])
        except BaseException:
            self.close()
            raise
        self._runs = 0
        self._planned_cache_version = 0

    def _operator_cache_budget(self, provider) -> int:
        budget = self.options.operator_cache_bytes
        if budget is not None:
            return budget
        keeps_all = provider == "ram" if isinstance(provider, str) else isinstance(provider, wp.Ram)
        if not keeps_all:
            return 0
        # Ram: the model's weight bytes. Packed XNNPACK operators are about the weight's size,
        # Winograd's transformed weights 4x (the UNet cached whole on Winograd: 8.2 GB peak RSS
        # for 3.4 GB of weights; with twice the weights as budget 7.9 GB; onnxruntime: 5.6 GB);
        # past the budget ops run streamed.
        return sum(int(np.prod(d.shape, dtype=np.int64)) * np.dtype(d.dtype).itemsize
                   for d in self.graph.weights.values())

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.graph.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.graph.outputs]

    def _validate(self, feeds: dict) -> dict[str, np.ndarray]:
        if not isinstance(feeds, dict):
            raise InputError(f"feeds must be a dict name -> array, got {type(feeds).__name__}")
        expected = {v.name: v for v in self.graph.inputs}
        unknown = [k for k in feeds if k not in expected]
        if unknown:
            raise InputError(f"unknown input(s) {unknown}; the model's inputs are {list(expected)}")
        out: dict[str, np.ndarray] = {}
        bound: dict[str, tuple[int, str]] = {}
        for name, v in expected.items():
            if name not in feeds:
                raise InputError(f"missing input {name!r} ({v.dtype.name}{list(v.shape)}); "
                                 f"the model's inputs are {list(expected)}")
            a = feeds[name]
            if not isinstance(a, np.ndarray):
                a = np.asarray(a)
            if a.dtype != v.dtype:
                raise InputError(f"input {name!r}: dtype {a.dtype.name}, expected {v.dtype.name}")
            if v.shape is None:
                out[name] = a
                continue
            if a.ndim != len(v.shape):
                raise InputError(f"input {name!r}: shape {list(a.shape)} has rank {a.ndim}, expected "
                                 f"rank {len(v.shape)} {list(v.shape)}")
            for axis, (got, want) in enumerate(zip(a.shape, v.shape)):
                if isinstance(want, int):
                    if got != want:
                        raise InputError(f"input {name!r}: shape {list(a.shape)}, expected {list(v.shape)} "
                                         f"(dim {axis} must be {want})")
                elif want in bound and bound[want][0] != got:
                    size, where = bound[want]
                    raise InputError(f"input {name!r}: dim {axis} ({want!r}) is {got}, but {where} "
                                     f"set {want!r} to {size}")
                else:
                    bound.setdefault(want, (got, f"input {name!r}"))
            out[name] = a
        return out

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns {output name: array}."""
        feeds = self._validate(feeds)
        if self._runs:
            cache = self.ctx.op_cache if self.ctx is not None else None
            if cache is not None and cache.version != self._planned_cache_version:
                # ops served from the operator cache no longer read their weights
                skip = cache.cached_weights() | self._streamed
                self.provider.plan([n for n in self.plan.weight_order if n not in skip])
                self._planned_cache_version = cache.version
            self.provider.restart()
        self._runs += 1
        out = self._interpreter.run(feeds)
        if self.ctx is not None and self.ctx.measure_kernels:
            self.save_kernel_choices()
        return out

    def save_kernel_choices(self) -> str | None:
        """Store the measured kernel choices beside the model; None if the directory is
        read-only or a URL (the choices still hold for this process)."""
        if self.is_url:
            return None
        try:
            return kernel_choice.save_file(self.path)
        except OSError:
            return None

    def close(self) -> None:
        p = getattr(self, "provider", None)
        if p is not None:
            p.close()
        ctx = getattr(self, "ctx", None)
        if ctx is not None:
            ctx.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _load_choices_url(path: str, provider) -> None:
    """The kernel choices stored beside a model on a web server, if it has them (the same
    kernels as from disk, so the same bits); none or unreadable: measured/defaulted as usual."""
    import json
    url = http.join_url(path, kernel_choice.CHOICES_FILE)
    try:
        if isinstance(provider, http.Http):
            text = provider.fetch_text(url)
        else:
            text = http.fetch_text(url, retries=2, deadline=30.0)
        data = json.loads(text)
        if data.get("format") == kernel_choice.FILE_FORMAT:
            kernel_choice.load(data["machines"].get(kernel_choice.machine_fingerprint(), []))
    except (WeightsError, ValueError, KeyError, TypeError, AttributeError):
        pass


class _NoWeights(WeightsProvider):
    """Provider for a model whose weights all fit inline in graph.txt."""

    def get(self, name: str) -> np.ndarray:
        raise WeightsError(f"weight {name!r} requested, but the model has no weights file")
