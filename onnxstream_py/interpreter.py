"""The interpreter: executes a Plan op by op, holding only live tensors.

It looks each step's op up in the plan (no op logic here), fetches the step's weights
from the provider just before the op and releases them right after, and drops every
intermediate after its last consumer. ``ONNXSTREAM_DEBUG=1`` prints each op; ``=2`` adds
input/output shapes and dtypes, the process's current RSS and the bytes of live activations.

Weight streaming (RunOptions.max_weight_chunk_bytes): with a provider that reads row ranges
cheaply, a weight larger than the limit reaches an op that declares ``_weight_refs`` as a
WeightRef (weight_ref.py), which the op reads chunk by chunk. A provider that checks a
streamed weight's checksum only at its end (Http) raises WeightsRetry when it finds the rows
it handed out corrupt: the op's output is discarded and the op runs again (at most
STREAM_RERUNS times), so corrupt bytes never reach an output.
"""
from __future__ import annotations

import inspect
import os
import sys
import time

import numpy as np

from weights_providers.format import WeightsRetry

from . import malloc
from .errors import OpError
from .graph import Graph
from .op_cache import CacheSlot
from .plan import Plan, Step
from .weight_ref import WeightRef

# times an op that read a streamed weight by rows is run again after WeightsRetry
STREAM_RERUNS = 3


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def debug_level() -> int:
    try:
        return int(os.environ.get("ONNXSTREAM_DEBUG", "0") or 0)
    except ValueError:
        return 0


def _read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view: feeds, consts and weights are never written, nor is any view of them."""
    v = a.view()
    v.flags.writeable = False
    return v


def _donation(step: Step, args: list, env: dict) -> np.ndarray | None:
    """The largest dying input buffer the op may overwrite: writeable, shared with nothing live."""
    best = None
    for j in step.donors:
        a = args[j]
        if not isinstance(a, np.ndarray) or not a.flags.writeable or (best is not None and a.size <= best.size):
            continue
        name = step.node.inputs[j]
        if any(n != name and np.may_share_memory(a, other) for n, other in env.items()):
            continue
        best = a
    return best


# activation_storage="fp16": below this a tensor is not worth two conversions.
NARROW_MIN_BYTES = 1 << 16


def _convert(a: np.ndarray, dtype, ctx) -> np.ndarray:
    """a as ``dtype`` (float16 <-> float32), keeping a channels-last layout; on the native pool
    when there is one (the native converters want contiguous memory: a channels-last array's
    NHWC buffer is)."""
    from .layout import is_nhwc, nhwc_buffer
    nhwc = a.ndim == 4 and not a.flags.c_contiguous and is_nhwc(a)
    buf = nhwc_buffer(a) if nhwc else np.ascontiguousarray(a)
    if ctx is None:
        out = buf.astype(dtype)
    else:
        from . import native
        out = (native.f32_to_f16 if dtype == np.float16 else native.f16_to_f32)(buf, pool=ctx.pool)
    return out.transpose(0, 3, 1, 2) if nhwc else out


class _Trimmer:
    """Returns the C heap's free pages to the OS (malloc.trim) when the process holds more than
    ``slack`` bytes beyond its live activations and what it held at the start of the run.

    glibc keeps freed blocks below its (self-raising, up to 32 MiB) mmap threshold for reuse:
    streaming a UNet that way held ~60 MiB more at peak than it used. Trimming after every op
    that freed something cost more system time than it saved (each trim walks the heap, and
    the pages are faulted in again); holding up to ``slack`` and trimming beyond it bounded
    the retained memory for almost nothing. The floor follows what a trim cannot return
    (libraries' own buffers), so a run never trims over and over in vain."""

    def __init__(self, slack: int, env: dict):
        self.slack, self.trims = slack, 0
        self.floor = self._held(env)

    @staticmethod
    def _held(env: dict) -> int:
        return current_rss_bytes() - sum(a.nbytes for a in env.values() if isinstance(a, np.ndarray))

    def after_free(self, env: dict) -> None:
        held = self._held(env)
        if held < self.floor:
            self.floor = held
        elif held > self.floor + self.slack:
            malloc.trim()
            self.trims += 1
            self.floor = max(self.floor, self._held(env))


def _describe(a) -> str:
    if a is None:
        return "-"
    if isinstance(a, WeightRef):
        return f"{a.dtype.name}{list(a.shape)} (chunked)"
    a = np.asarray(a)
    return f"{a.dtype.name}{list(a.shape)}"


class Interpreter:
    def __init__(self, graph: Graph, plan: Plan, provider, ctx=None):
        for a in graph.consts.values():
            a.flags.writeable = False
        if plan.dequant_weights:      # 8-bit weights served as float32 (weight_dequant.py)
            from .weight_dequant import DequantProvider, graph_view
            graph = graph_view(graph, plan.dequant_weights)
            provider = DequantProvider(provider, plan.dequant_weights, graph, ctx)
        self.ctx = ctx            # NativeContext for native ops (None on the numpy backend)
        self.graph = graph
        self.plan = plan
        self.provider = provider
        cache = getattr(ctx, "op_cache", None)
        self._slots: dict[int, CacheSlot] = {}
        if cache is not None and cache.budget > 0:
            for i, step in enumerate(plan.steps):
                if step.impl.wants_cache:
                    pos = tuple(sorted(step.weight_inputs))
                    static = tuple(j for j, n in enumerate(step.node.inputs)
                                   if n and (j in step.weight_inputs or n in graph.consts))
                    self._slots[i] = CacheSlot(cache, i, tuple(step.node.inputs[j] for j in pos), pos, static)
        self._chunked = self._chunked_weights()
        if getattr(plan.options, "malloc_trim_slack_bytes", None) is not None and malloc.available():
            malloc.limit_arenas(1)      # memory freed on any thread serves every thread (malloc.py)
        # Optional ``observer(node, outputs)`` called after each op with its output arrays
        # (calibrate.py records activation ranges through it); None: one test per op, nothing more.
        self.observer = None

    def _chunked_weights(self) -> dict[int, frozenset[int]]:
        """Per step, the weight input positions handed to the op as WeightRefs: weights larger
        than max_weight_chunk_bytes, at positions the op's ``_weight_refs`` default names, when
        the provider reads row ranges cheaply and no operator cache slot wants the whole weight."""
        limit = getattr(getattr(self.ctx, "options", None), "max_weight_chunk_bytes", 0)
        if not limit:
            return {}
        reads_rows = getattr(self.provider, "reads_rows", None)
        if not callable(reads_rows):     # a provider not derived from WeightsProvider
            every = bool(getattr(self.provider, "reads_row_ranges", False))
            reads_rows = lambda name: every    # noqa: E731
        accepts: dict[object, frozenset[int]] = {}
        out = {}
        for i, step in enumerate(self.plan.steps):
            fn = step.impl.fn
            if fn not in accepts:
                p = inspect.signature(fn).parameters.get("_weight_refs")
                accepts[fn] = frozenset(p.default) if p is not None and p.default is not p.empty else frozenset()
            if i in self._slots or not accepts[fn]:
                continue
            big = frozenset(j for j in step.weight_inputs & accepts[fn]
                            if len(self.graph.weights[step.node.inputs[j]].shape) >= 1
                            and reads_rows(step.node.inputs[j])
                            and self._decl_nbytes(step.node.inputs[j]) > self._chunk_limit(step.node.inputs[j], limit))
            if big:
                out[i] = big
        return out

    def streamed_weights(self) -> set[str]:
        """Names some op reads in chunks of rows (left out of the provider's plan)."""
        return {self.plan.steps[i].node.inputs[j] for i, pos in self._chunked.items() for j in pos}

    def _chunk_limit(self, name: str, limit: int) -> int:
        """The chunk budget in bytes of the op's dtype: a weight stored narrower (fp16-storage)
        and widened per chunk holds the stored and the widened chunk at once, so its chunks are
        smaller (8 MiB: 5.3 MiB of float32 + 2.7 of float16), and it is chunked from that size on."""
        decl = self.graph.weights[name]
        op, stored = np.dtype(decl.dtype).itemsize, np.dtype(decl.stored_dtype).itemsize
        return limit if stored >= op else max(1, limit * op // (op + stored))

    def _decl_nbytes(self, name: str) -> int:
        decl = self.graph.weights[name]
        return int(np.prod(decl.shape, dtype=np.int64)) * np.dtype(decl.dtype).itemsize

    def _weight_ref(self, name: str) -> WeightRef:
        decl = self.graph.weights[name]
        return WeightRef(name, decl.shape, decl.dtype, self.provider,
                         self._chunk_limit(name, self.ctx.options.max_weight_chunk_bytes),
                         widen=self.ctx.widen, fetch_full=self._fetch_weight)

    def _fetch_weight(self, name: str) -> np.ndarray:
        decl = self.graph.weights[name]
        a = self.provider.get(name)
        if a.dtype != decl.dtype:          # --fp16 storage: widen per op
            if self.ctx is not None and a.dtype == np.float16 and decl.dtype == np.float32:
                a = self.ctx.widen(a)
            else:
                a = a.astype(decl.dtype)
        return _read_only(a)

    def _gather_rows(self, step: Step, table_name: str, indices: np.ndarray) -> list:
        """Gather from a weight table reading only the rows the indices touch."""
        decl = self.graph.weights[table_name]
        n = decl.shape[0] if decl.shape else 0
        idx = np.asarray(indices).astype(np.int64, copy=False)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise OpError(f"node {step.node.name!r} (Gather): index out of range [{-n}, {n}) "
                          f"for weight {table_name!r} of shape {list(decl.shape)}")
        idx = np.where(idx < 0, idx + n, idx)
        rows, local = np.unique(idx, return_inverse=True)
        get_rows = getattr(self.provider, "get_rows", None)
        table = get_rows(table_name, rows) if get_rows else self.provider.get(table_name)[rows]
        if table.dtype != decl.dtype:
            table = table.astype(decl.dtype)
        return [table, local.reshape(idx.shape)]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        graph, provider = self.graph, self.provider
        env: dict[str, np.ndarray] = {k: _read_only(v) for k, v in feeds.items()}
        narrowed: set[str] = set()      # names stored as float16 until their next reader
        slack = getattr(self.plan.options, "malloc_trim_slack_bytes", None)
        trimmer = _Trimmer(slack, env) if slack is not None and malloc.available() else None
        consts = graph.consts
        level = debug_level()
        total = len(self.plan.steps)
        finish_rows = getattr(provider, "finish_rows", None)
        for i, step in enumerate(self.plan.steps):
            node = step.node
            t0 = time.perf_counter() if level else 0.0
            slot = self._slots.get(i)
            from_cache = slot is not None and slot.entry is not None   # weights not needed
            chunked = self._chunked.get(i, ())
            for name in step.widen_before:
                if name in narrowed:
                    narrowed.discard(name)
                    env[name] = _convert(env[name], np.float32, self.ctx)
            args = []
            for j, name in enumerate(node.inputs):
                if not name:
                    args.append(None)
                elif j in chunked:
                    args.append(self._weight_ref(name))
                elif j in step.weight_inputs:
                    args.append(None if (step.row_gather and j == 0) or from_cache else self._fetch_weight(name))
                elif name in env:
                    args.append(env[name])
                else:
                    args.append(consts[name])
            if step.row_gather:
                args[0], args[1] = self._gather_rows(step, node.inputs[0], args[1])
            kwargs = step.kwargs
            if step.impl.wants_ctx:
                kwargs = dict(kwargs, _ctx=self.ctx)
            if step.impl.wants_cache:
                kwargs = dict(kwargs, _cache=slot)
            if step.donors:
                buf = _donation(step, args, env)
                if buf is not None:
                    kwargs = dict(kwargs, _out=buf)
            reruns = 0
            while True:
                try:
                    result = step.impl.fn(*args, **kwargs)
                    if chunked and finish_rows is not None:
                        for j in chunked:
                            finish_rows(node.inputs[j])
                    break
                except WeightsRetry as e:
                    result = None
                    # a donated input buffer may have been overwritten: no second run then
                    if reruns >= STREAM_RERUNS or "_out" in kwargs:
                        raise OpError(f"node {node.name!r} ({node.op_type}): {e} (after {reruns} "
                                      f"rerun(s) of the op)") from e
                    reruns += 1
                except Exception as e:
                    shapes = ", ".join(_describe(a) for a in args)
                    raise OpError(f"node {node.name!r} ({node.op_type}) failed on inputs ({shapes}): "
                                  f"{type(e).__name__}: {e}") from e
            if not isinstance(result, (tuple, list)):
                result = (result,)
            if len(result) < sum(1 for o in node.outputs if o):
                raise OpError(f"node {node.name!r} ({node.op_type}) returned {len(result)} outputs, "
                              f"the graph expects {len(node.outputs)}")
            for name, value in zip(node.outputs, result):
                if name:
                    env[name] = value
            if self.observer is not None:
                self.observer(node, result)
            if not from_cache:
                kept = slot is not None and slot.entry is not None    # the op cached a prepared copy
                for j in step.weight_inputs:
                    (provider.drop if kept else provider.release)(node.inputs[j])
            del args, result
            for name in step.narrow_after:
                a = env.get(name)
                # an alias of another live value (a view) would be copied, not freed: left alone
                if (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.nbytes >= NARROW_MIN_BYTES
                        and name not in step.free_after
                        and not any(n != name and np.may_share_memory(a, o) for n, o in env.items())):
                    env[name] = _convert(a, np.float16, self.ctx)
                    narrowed.add(name)
                del a
            if level:
                line = f"[{i + 1}/{total}] {node.op_type} {node.name}"
                if level >= 2:
                    ins = ", ".join(_describe(env.get(n, consts.get(n))) if n and n not in graph.weights
                                    else (f"w:{n}" if n else "-") for n in node.inputs)
                    outs = ", ".join(_describe(env[o]) for o in node.outputs if o)
                    live = sum(a.nbytes for a in env.values() if isinstance(a, np.ndarray))
                    line += (f"  ({ins}) -> ({outs})  {1e3 * (time.perf_counter() - t0):.1f} ms"
                             f"  rss {current_rss_bytes() / 2**20:.0f} MiB  live {live / 2**20:.0f} MiB")
                print(line, file=sys.stderr)
            for name in step.free_after:
                env.pop(name, None)
            if trimmer is not None and step.free_after:
                trimmer.after_free(env)
        if trimmer is not None and level:
            print(f"malloc_trim: {trimmer.trims} calls", file=sys.stderr)
        out = {}
        for v in graph.outputs:
            if v.name in env:
                out[v.name] = env[v.name]
            elif v.name in consts:
                out[v.name] = consts[v.name].copy()
            else:
                out[v.name] = self._fetch_weight(v.name)
        return out
