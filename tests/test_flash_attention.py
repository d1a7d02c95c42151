"""Flash attention (native/osn_k_flash.c): the C kernel against its numpy twin (ops/flash.py)
and a float64 reference on odd sizes (head sizes 8..160 and 13, 1..1000 keys, M != N), masks of
every broadcast shape, causal, float16 inputs, strided and transposed views; the op's routing
(RunOptions.attention, kernel_choice); a model against onnxruntime's unfused graph; and the
memory bar: peak RSS does not grow with the sequence beyond Q, K, V and the output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

native = pytest.importorskip("onnxstream_py.native")

import onnxstream_py as osp  # noqa: E402
from onnxstream_py import kernel_choice  # noqa: E402
from onnxstream_py.converter import convert_model_proto  # noqa: E402
from onnxstream_py.native_context import NativeContext  # noqa: E402
from onnxstream_py.ops import native_attention as na  # noqa: E402
from onnxstream_py.ops.attention import SlicedAttention as numpy_op  # noqa: E402
from onnxstream_py.ops.flash import flash_attention as twin  # noqa: E402

import model_builders as mb  # noqa: E402
from op_testing import assert_matches  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference(q, kt, v, mask=None, scale=1.0, causal=False):
    """The unfused graph in float64: softmax(q·kt·scale + mask)·v (causal: key j <= query i)."""
    s = (q.astype(np.float64) @ kt.astype(np.float64)) * scale
    if mask is not None:
        s = s + mask.astype(np.float64)
    if causal:
        m, n = s.shape[-2:]
        s = np.where(np.arange(n)[None, :] <= np.arange(m)[:, None], s, -np.inf)
    with np.errstate(invalid="ignore"):
        s = s - s.max(-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(-1, keepdims=True)
    return p @ v.astype(np.float64)


def _inputs(heads, m, n, d, dv, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((heads, m, d)).astype(dtype), rng.standard_normal((heads, d, n)).astype(dtype),
            rng.standard_normal((heads, n, dv)).astype(dtype))


def _close(got, want, rtol=1e-5):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.max(np.abs(want))))


# ---------------------------------------------------------------- kernel vs twin vs reference

@pytest.mark.parametrize("d", [8, 13, 40, 64, 80, 160])
@pytest.mark.parametrize("n", [1, 7, 77, 130, 1000])
def test_kernel_matches_twin_and_reference(d, n, ctx):
    m = 67 if n != 77 else 130            # two query blocks, the second short; M != N
    dv = d if d != 64 else 24             # dv != d too (a half-width tail chunk)
    q, kt, v = _inputs(2, m, n, d, dv, seed=d + n)
    scale = d ** -0.5
    got = native.flash_attention(q, kt, v, scale=scale, pool=ctx.pool)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    _close(got, reference(q, kt, v, scale=scale))
    _close(twin(q, kt, v, scale=scale), reference(q, kt, v, scale=scale))
    _close(got, twin(q, kt, v, scale=scale))


@pytest.mark.parametrize("mask_shape", [(67, 130), (1, 130), (67, 1), (3, 1, 1, 130), (2, 67, 130), (130,)])
@pytest.mark.parametrize("causal", [False, True])
def test_masks_broadcast_and_causal(mask_shape, causal, ctx):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((3, 2, 67, 19)).astype(np.float32)
    kt = rng.standard_normal((3, 2, 19, 130)).astype(np.float32)
    v = rng.standard_normal((3, 2, 130, 13)).astype(np.float32)
    mask = rng.standard_normal(mask_shape).astype(np.float32)
    want = reference(q, kt, v, mask, 0.3, causal)
    _close(native.flash_attention(q, kt, v, mask, 0.3, causal, pool=ctx.pool), want)
    _close(twin(q, kt, v, mask, 0.3, causal), want)


def test_causal_with_more_keys_than_queries(ctx):
    q, kt, v = _inputs(2, 70, 200, 16, 16)
    want = reference(q, kt, v, None, 0.25, True)   # top-left aligned: query i sees keys 0..i
    _close(native.flash_attention(q, kt, v, scale=0.25, causal=True, pool=ctx.pool), want)
    _close(twin(q, kt, v, scale=0.25, causal=True), want)


def test_masked_rows_match_the_unfused_graph(ctx):
    """-inf over a whole first key block (nothing finite seen yet) then finite keys: exact; a
    row with no finite score at all: NaN, as softmax of all -inf."""
    q, kt, v = _inputs(1, 5, 150, 8, 8)
    mask = np.zeros((5, 150), np.float32)
    mask[:, :100] = -np.inf
    mask[3, :] = -np.inf
    got = native.flash_attention(q, kt, v, mask, pool=ctx.pool)
    want = reference(q, kt, v, mask)
    assert np.isnan(got[0, 3]).all() and np.isnan(want[0, 3]).all()
    keep = [0, 1, 2, 4]
    _close(got[:, keep], want[:, keep])
    assert np.isnan(twin(q, kt, v, mask)[0, 3]).all()


def test_large_scores_do_not_overflow(ctx):
    q, kt, v = _inputs(2, 33, 300, 16, 16)
    _close(native.flash_attention(q * 30, kt * 30, v, pool=ctx.pool), reference(q * 30, kt * 30, v), rtol=1e-4)


def test_float16_inputs(ctx):
    q, kt, v = _inputs(2, 67, 130, 40, 40, np.float16)
    got = native.flash_attention(q, kt, v, scale=40 ** -0.5, pool=ctx.pool)
    assert got.dtype == np.float16
    want = reference(q, kt, v, scale=40 ** -0.5)
    assert_matches(got, want.astype(np.float16), 0, 0, fp16_nmse=1e-6)
    assert_matches(twin(q, kt, v, scale=40 ** -0.5), want.astype(np.float16), 0, 0, fp16_nmse=1e-6)


def test_strided_and_transposed_views(ctx):
    rng = np.random.default_rng(4)
    qbig = rng.standard_normal((2, 3, 140, 50)).astype(np.float32)
    q = qbig[:, :, ::2, 5:45]                                       # row stride 2 rows, offset columns
    k = rng.standard_normal((2, 1, 131, 40)).astype(np.float32)
    kt = k.transpose(0, 1, 3, 2)                                    # Kᵀ as the exported graph's view
    vt = rng.standard_normal((2, 1, 24, 131)).astype(np.float32)
    v = vt.transpose(0, 1, 3, 2)[..., ::-1]                         # column stride != 1, negative
    want = reference(q, kt, v, scale=0.2)
    _close(native.flash_attention(q, kt, v, scale=0.2, pool=ctx.pool), want)
    _close(native.flash_attention(np.ascontiguousarray(q), np.ascontiguousarray(kt), np.ascontiguousarray(v),
                                  scale=0.2), want)
    h16 = [a.astype(np.float16) for a in (qbig, k, vt)]
    got16 = native.flash_attention(h16[0][:, :, ::2, 5:45], h16[1].transpose(0, 1, 3, 2),
                                   h16[2].transpose(0, 1, 3, 2)[..., ::-1], scale=0.2, pool=ctx.pool)
    assert_matches(got16, want.astype(np.float16), 0, 0, fp16_nmse=1e-5)


def test_bad_inputs_raise_naming_the_op():
    q, kt, v = _inputs(1, 4, 6, 8, 8)
    with pytest.raises(ValueError, match="flash attention.*do not chain"):
        native.flash_attention(q, kt[:, :7], v)
    with pytest.raises(ValueError, match="flash attention.*dtypes differ"):
        native.flash_attention(q.astype(np.float16), kt, v)
    with pytest.raises(ValueError, match="flash attention.*float32 or float16"):
        native.flash_attention(q.astype(np.float64), kt, v)
    with pytest.raises(ValueError, match="flash attention.*broadcast"):
        native.flash_attention(q, kt, v, np.zeros((3, 6), np.float32))
    with pytest.raises(ValueError, match="flash attention.*broadcast"):
        native.flash_attention(q, kt, v, np.zeros((5, 1, 4, 6), np.float32))
    with pytest.raises(ValueError, match="flash attention.*no keys"):
        native.flash_attention(q, kt[..., :0], v[:, :0])
    assert native.flash_attention(q[:, :0], kt, v).shape == (1, 0, 8)


# ---------------------------------------------------------------- the op and its routing

@pytest.mark.parametrize("scale_op", ["mul", "div", ""])
@pytest.mark.parametrize("attention", ["flash", "sliced", "auto"])
def test_op_routes_to_each_kernel(scale_op, attention, ctx, monkeypatch):
    calls = []
    real = native.flash_attention
    monkeypatch.setattr(native, "flash_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, 3, 67, 19)).astype(np.float32)
    kt = rng.standard_normal((2, 3, 19, 130)).astype(np.float32)
    v = rng.standard_normal((2, 3, 130, 13)).astype(np.float32)
    mask = rng.standard_normal((1, 130)).astype(np.float32)
    scale = np.array(0.3 if scale_op == "mul" else 2.5, np.float32)
    want = numpy_op(q, kt, v, scale, mask, scale_op=scale_op)
    got = na.SlicedAttention(q, kt, v, scale, mask, scale_op=scale_op, attention=attention, _ctx=ctx)
    _close(got, want)
    expected = attention if attention != "auto" else na.default_attention_kernel(67, 130, 19, 13, 6)
    assert bool(calls) == (expected == "flash")


def test_op_float16_inputs_take_the_flash_kernel(ctx):
    q, kt, v = _inputs(2, 67, 130, 19, 13, np.float16)
    scale = np.array(0.3, np.float16)
    got = na.SlicedAttention(q, kt, v, scale, None, scale_op="mul", attention="flash", _ctx=ctx)
    assert got.dtype == np.float16
    assert_matches(got, numpy_op(q, kt, v, scale, None, scale_op="mul"), 0, 0, fp16_nmse=1e-6)


def test_op_rejects_unknown_attention(ctx):
    q, kt, v = _inputs(1, 4, 6, 8, 8)
    with pytest.raises(ValueError, match="SlicedAttention: attention"):
        na.SlicedAttention(q, kt, v, attention="fast", _ctx=ctx)
    with pytest.raises(ValueError, match="RunOptions.attention"):
        osp.RunOptions(attention="fast")


def test_auto_measures_and_remembers(monkeypatch):
    kernel_choice.clear()
    c = NativeContext(osp.RunOptions(backend="native", threads=2, kernel_choice="measure"))
    try:
        q, kt, v = _inputs(2, 67, 130, 19, 13)
        got = na.SlicedAttention(q, kt, v, attention="auto", _ctx=c)
        _close(got, reference(q, kt, v))
        (entry,) = [e for e in kernel_choice.table() if e["key"][0] == "SlicedAttention"]
        assert entry["choice"] in ("flash", "sliced") and set(entry["seconds"]) == {"flash", "sliced"}
    finally:
        c.close()
        kernel_choice.clear()


def test_forced_choice_of_another_op_falls_back_to_the_default():
    ran = []
    cands = {"flash": lambda: ran.append("flash") or 1, "sliced": lambda: ran.append("sliced") or 2}
    with kernel_choice.forced("xnnpack"):
        assert kernel_choice.run_chosen(("t",), cands, measure=True, default="sliced") == 2
        assert kernel_choice.run_chosen(("t",), cands, measure=False) == 1   # no default: the first
    with kernel_choice.forced("flash"):
        assert kernel_choice.run_chosen(("t",), cands, default="sliced") == 1
    assert ran == ["sliced", "flash", "flash"]
    kernel_choice.remember(("stored",), "winograd")       # stored, but not a candidate this time
    try:
        assert kernel_choice.run_chosen(("stored",), cands, default="sliced") == 2
    finally:
        kernel_choice.clear()


@pytest.mark.parametrize("attention", ["flash", "sliced", "auto"])
@pytest.mark.parametrize("scale_op,mask", [("Mul", False), ("Div", True)])
def test_model_matches_onnxruntime(tmp_path, attention, scale_op, mask):
    m, n, d = 77, 130, 40
    model = mb.attention(m, n, d, heads=3, scale_op=scale_op, mask=mask)
    convert_model_proto(model, str(tmp_path / "m"))
    rng = np.random.default_rng(3)
    feeds = {name: rng.standard_normal((2, 3, m if name == "q" else n, d)).astype(np.float32) for name in "qkv"}
    ref = mb.ort_run(model, feeds)[0]
    options = osp.RunOptions(backend="native", threads=2, attention=attention)
    with osp.Model(str(tmp_path / "m"), options=options) as model_run:
        assert model_run.plan.fusions == {"SlicedAttention": 1}
        (step,) = [s for s in model_run.plan.steps if s.node.op_type == "SlicedAttention"]
        assert step.kwargs["attention"] == attention
        np.testing.assert_allclose(model_run.run(feeds)["y"], ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- memory bar

# Peak and current RSS from /proc/self/status (VmHWM, VmRSS). Not getrusage's ru_maxrss: Linux
# carries it across exec from the forking process (subprocess forks pytest, whose own peak in
# a full test run is ~360 MiB), while VmHWM belongs to the new process image.
_RSS_CHILD = textwrap.dedent("""
    import json, sys
    import onnxstream_py as osp
    import numpy as np
    from onnxstream_py import ops
    from onnxstream_py.native_context import NativeContext
    from onnxstream_py.ops import native_attention as na

    def status_kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    n, heads, d = int(sys.argv[1]), 8, 40
    ops.load_native()
    ctx = NativeContext(osp.RunOptions(backend="native", threads=2))
    rng = np.random.default_rng(0)
    q, kt, v = (rng.standard_normal(s, dtype=np.float32) for s in ((1, heads, n, d), (1, heads, d, n), (1, heads, n, d)))
    scale = np.array(d ** -0.5, np.float32)
    current = status_kib("VmRSS")                     # resident right before the op
    out = na.SlicedAttention(q, kt, v, scale, None, scale_op="mul", attention="flash", _ctx=ctx)
    peak = status_kib("VmHWM")
    ok = bool(np.isfinite(out[0, :, :64]).all())
    print(json.dumps({"peak_kib": peak, "current_kib": current, "data_bytes": 4 * q.nbytes,
                      "out_bytes": out.nbytes, "finite": ok}))
""")


def _peak(n: int) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(n)], capture_output=True, text=True, env=env,
                         timeout=600, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads resident memory from /proc")
def test_peak_rss_does_not_grow_with_sequence_length():
    """8 heads, d = 40, 4096 and 16384 tokens: Q, K, V and the output grow by 63 MiB; the
    scores (sliced: a block of rows x all keys; unfused: 8 GiB at 16384) must not show up."""
    small, large = _peak(4096), _peak(16384)
    assert small["finite"] and large["finite"]
    grown = (large["peak_kib"] - small["peak_kib"]) * 1024
    data = large["data_bytes"] - small["data_bytes"]
    assert grown - data < 8 << 20, (small, large)
    # and directly: the op's peak above what was resident before it is the output and tiles
    assert (large["peak_kib"] - large["current_kib"]) * 1024 - large["out_bytes"] < 8 << 20, large
