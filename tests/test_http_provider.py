"""The HTTP weights provider (weights_providers/http.py) against a real nginx on 127.0.0.1.

A module fixture starts nginx (Debian's package; scripts/setup.sh --test installs it) as the
current user with a generated configuration in a tmp dir (no daemon, no master process, a
free port), serving converted tiny models: a conv net, the tiny SD1 UNet fixture and the
tiny SD pipeline. tests/fault_proxy.py sits in front of it to inject faults on a seeded
schedule. Outputs over HTTP must be bitwise identical to DiskNoCache's, under faults too.
"""
from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import weights_providers as wp
from weights_providers import Http, WeightsError
from weights_providers.format import WEIGHTS_FILE

from fault_proxy import KINDS, Blackhole, FaultProxy
from nginx_server import NGINX, free_port as _free_port, make_tls_files, start_nginx, stop_nginx

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx not installed (bash scripts/setup.sh --test)")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "models"
UNET = "unet_sd1_ts17"
# small knobs so fault tests are quick: stalls (1.0-1.5 s) exceed the 0.5 s read timeout
FAST = dict(timeout=0.5, retries=8, backoff=0.02, max_backoff=0.2, deadline=60.0, seed=1)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(root dir, base URL of nginx) with converted models conv/, unet/, sd/ under the root."""
    from onnxstream_py.converter import convert, convert_model_proto
    from model_builders import conv_mlp

    root = tmp_path_factory.mktemp("http_root")
    work = tmp_path_factory.mktemp("nginx")
    quiet = lambda *a, **k: None  # noqa: E731
    convert_model_proto(conv_mlp(seed=3, channels=32), str(root / "conv"), log=quiet)
    convert(str(FIXTURES / f"{UNET}.onnx"), str(root / "unet"), log=quiet)
    write_blobs(root / "blobs")
    proc, port = start_nginx(root, work)
    yield root, f"http://127.0.0.1:{port}"
    stop_nginx(proc)


def make_blobs() -> dict[str, np.ndarray]:
    """Tensors with SIMD-tail and multi-MiB sizes (several socket pieces: faults mid-body)."""
    rng = np.random.default_rng(11)
    out = {f"t{n}": rng.standard_normal(n).astype(np.float32) for n in (1, 13, 19, 127, 1000, 4099)}
    out["big"] = rng.standard_normal((3, 1 << 19)).astype(np.float32)          # 6 MiB
    out["i8"] = rng.integers(-128, 128, size=(77, 13), dtype=np.int8)
    out["big2"] = rng.standard_normal((1 << 20) + 7).astype(np.float32)
    return out


def write_blobs(d: Path) -> None:
    from weights_providers.format import WeightsWriter
    d.mkdir()
    blobs = make_blobs()
    w = WeightsWriter(str(d / WEIGHTS_FILE), [(n, a.dtype, a.shape) for n, a in blobs.items()])
    for n, a in blobs.items():
        w.write(n, a)
    w.close()


def unet_feeds() -> dict[str, np.ndarray]:
    from fixture_inputs import draw_inputs
    spec = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"][UNET]
    return draw_inputs(spec["inputs"], 0, spec["seed"])


CONV_FEEDS = {"x": np.random.default_rng(5).standard_normal((2, 3, 19, 13)).astype(np.float32)}


def run_model(path, provider, feeds, runs: int = 1):
    from onnxstream_py import Model
    with Model(path, provider=provider) as m:
        outs = [m.run(feeds) for _ in range(runs)]
    return outs


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        assert a[k].tobytes() == b[k].tobytes(), f"output {k!r} differs"


@pytest.fixture(scope="module")
def disk_unet(served):
    root, _ = served
    return run_model(str(root / "unet"), "nocache", unet_feeds())[0]


# --- plain serving ---------------------------------------------------------------------------

@pytest.mark.parametrize("provider", ["prefetch", "nocache", "http", "ram"])
def test_conv_net_over_http_is_bitwise_disk(served, provider):
    root, url = served
    want = run_model(str(root / "conv"), "nocache", CONV_FEEDS)[0]
    got = run_model(f"{url}/conv", provider, CONV_FEEDS, runs=2)
    for g in got:
        assert_same(g, want)


def test_tiny_unet_over_http_is_bitwise_disk(served, disk_unet):
    _, url = served
    for g in run_model(f"{url}/unet", "prefetch", unet_feeds(), runs=2):
        assert_same(g, disk_unet)


def test_provider_instance_merges_adjacent_tensors_and_reuses_connections(served, disk_unet):
    root, url = served
    from onnxstream_py import Model
    p = Http(f"{url}/unet", budget_bytes=1 << 20)
    with Model(f"{url}/unet", provider=p) as m:
        assert_same(m.run(unet_feeds()), disk_unet)
        planned = len(dict.fromkeys(m.plan.weight_order))
        stats = p.stats
    # index (probe + 2 agreeing copies) + one request per merged span: fewer than one per tensor
    assert planned > 20
    assert stats["requests"] < planned, stats
    assert not stats["failures"] and not stats["range_ignored"]
    # every tensor arrives intact and equal to the disk copy, served out of plan order too
    with Http(f"{url}/unet", budget_bytes=0) as h, wp.DiskNoCache(str(root / "unet")) as d:
        names = list(d.index.entries)
        for name in names[::-1][:40]:
            assert h.get(name).tobytes() == d.get(name).tobytes()
        assert h.index.header_bytes == d.index.header_bytes


@pytest.mark.parametrize("parallel", [1, 2, 3])
def test_big_tensors_as_parallel_ranges_are_bitwise(served, parallel):
    """A tensor of >= 2 x PART_BYTES arrives as up to ``parallel`` ranges at once (one request
    each), checked against its one CRC-32 by combining the ranges' CRCs."""
    from weights_providers.http import PART_BYTES, _split
    _, url = served
    blobs = make_blobs()
    with Http(f"{url}/blobs", budget_bytes=0, parallel=parallel) as h:
        for name in ("big", "big2", "t4099"):
            before = h.stats["requests"]
            assert h.get(name).tobytes() == blobs[name].tobytes(), name
            parts = _split(blobs[name].nbytes, parallel)
            assert h.stats["requests"] - before == len(parts)
            assert len(parts) == (min(parallel, blobs[name].nbytes // PART_BYTES) if name != "t4099" else 1)
        assert not h.stats["failures"]


def test_split_covers_the_range_in_piece_aligned_parts():
    from weights_providers.http import PART_BYTES, PIECE, _split
    for n in (0, 1, PART_BYTES, 2 * PART_BYTES - 1, 2 * PART_BYTES, 6 * PART_BYTES + 5, 123456789):
        for k in (1, 2, 3, 4):
            parts = _split(n, k)
            assert sum(b - a for a, b in parts) == n and all(a < b for a, b in parts)
            assert all(parts[i][1] == parts[i + 1][0] for i in range(len(parts) - 1))
            assert all(a % PIECE == 0 for a, _ in parts)
            assert len(parts) <= max(1, k) and (len(parts) == 1 or all(b - a >= PART_BYTES - PIECE for a, b in parts))


def test_dropped_downloads_are_reused_and_held_ones_never_touched(served):
    """The mapping of a tensor the caller dropped receives a later download (no fresh,
    kernel-zeroed pages); one the caller still holds is never written to."""
    _, url = served
    blobs = make_blobs()
    with Http(f"{url}/blobs", budget_bytes=0) as h:
        held = h.get("big")                       # kept for the whole test
        for _ in range(3):
            for name in ("big2", "big", "big2"):
                a = h.get(name)
                assert a.tobytes() == blobs[name].tobytes()
                del a                             # the last view dies: its mapping is kept
        assert h.stats["buffers_reused"] >= 4, h.stats
        assert held.tobytes() == blobs["big"].tobytes()
        assert not held.flags.writeable


# --- big tensors streamed by rows (stream=True; what provider "nocache" uses for a URL) --------

def read_in_chunks(h, name: str, rows_per_chunk: int) -> np.ndarray:
    """What an op with a chunked weight does: rows in order, then finish_rows (may raise)."""
    n = h.index[name].shape[0]
    parts = [np.array(h.get_rows(name, np.arange(r, min(n, r + rows_per_chunk)))) for r in range(0, n, rows_per_chunk)]
    h.finish_rows(name)
    h.release(name)
    return np.concatenate(parts)


def test_streamed_rows_are_bitwise_and_fetched_one_range_ahead(served):
    _, url = served
    blobs = make_blobs()
    with Http(f"{url}/blobs", budget_bytes=1 << 20, stream=True) as h:
        assert h.reads_rows("big2") and h.reads_rows("big") and not h.reads_rows("t4099")
        assert not h.reads_rows("no such tensor")
        for run in range(2):
            h.restart()
            before = h.stats["requests"]
            got = read_in_chunks(h, "big2", 100_000)          # 11 chunks of 400 kB, the last short
            assert got.tobytes() == blobs["big2"].tobytes()
            assert h.stats["requests"] - before == 11
        a = h.get_rows("big", np.arange(0, 3))                # all rows in one request: the end
        assert a.tobytes() == blobs["big"].tobytes() and not a.flags.writeable
        assert h.stats["streams"] == 3 and not h.stats["out_of_order"] and not h.stats["failures"]
    with Http(f"{url}/blobs", budget_bytes=1 << 20) as h:     # stream=False (default)
        assert not h.reads_rows("big2")


def test_streamed_rows_out_of_order_or_partial_stay_checked(served):
    _, url = served
    blobs = make_blobs()
    big2 = blobs["big2"]
    with Http(f"{url}/blobs", budget_bytes=0, stream=True) as h:
        # out of order: the whole tensor is fetched, checked and served until release
        assert h.get_rows("big2", np.arange(10, 20)).tobytes() == big2[10:20].tobytes()
        assert h.get_rows("big2", np.arange(5, 7)).tobytes() == big2[5:7].tobytes()
        assert h.stats["out_of_order"] == 1
        h.finish_rows("big2")
        h.release("big2")
        # an op that stops early: finish_rows fetches the rest to complete the checksum
        before = h.stats["bytes_received"]
        assert h.get_rows("big2", np.arange(0, 1000)).tobytes() == big2[:1000].tobytes()
        h.finish_rows("big2")
        assert h.stats["bytes_received"] - before >= big2.nbytes
        # row lists that are not one ascending run are served from the whole tensor
        idx = np.array([3, 1, 2])
        assert h.get_rows("big2", idx).tobytes() == big2[idx].tobytes()
        assert not h.stats["failures"]


def test_corrupt_streamed_rows_raise_weights_retry_then_read_clean(served):
    """A flipped byte inside a chunk is found when the last rows arrive (the checksum covers
    the tensor): WeightsRetry, and reading the rows again from the start gives clean bytes."""
    from weights_providers import WeightsRetry
    _, url = served
    blobs = make_blobs()
    h = Http(f"{url}/blobs", budget_bytes=0, stream=True, retries=1, backoff=0.01)
    try:
        with FaultProxy(int(url.rsplit(":", 1)[1]), rate=1.0, kinds=("flip",)) as proxy:
            h.url = f"{proxy.url}/blobs/{WEIGHTS_FILE}"        # index read cleanly, bodies corrupted
            with pytest.raises(WeightsRetry) as ei:
                read_in_chunks(h, "big2", 300_000)
            assert "checksum mismatch" in str(ei.value) and "'big2'" in str(ei.value)
            # an op that stopped early is checked by finish_rows, over the rest of the tensor
            h.get_rows("big2", np.arange(0, 300_000))
            with pytest.raises(WeightsRetry):
                h.finish_rows("big2")
        h.url = f"{url}/blobs/{WEIGHTS_FILE}"
        assert read_in_chunks(h, "big2", 300_000).tobytes() == blobs["big2"].tobytes()
        assert h.stats["checksum_reruns"] == 2
    finally:
        h.close()


def test_model_url_with_nocache_streams_by_rows_bitwise_disk_nocache(served):
    """provider "nocache" on a URL: Http(budget 0, stream=True), chunked exactly as DiskNoCache,
    so the outputs are bitwise DiskNoCache's; under every fault kind too (a corrupted chunk
    reruns its op)."""
    from onnxstream_py import Model, RunOptions
    root, url = served
    opts = RunOptions(max_weight_chunk_bytes=2048)      # the tiny UNet's weights are KBs
    feeds = unet_feeds()
    with Model(str(root / "unet"), provider="nocache", options=opts) as m:
        want = m.run(feeds)
    with Model(f"{url}/unet", provider="nocache", options=opts) as m:
        assert isinstance(m.provider, Http) and m.provider.stream
        assert m._streamed and not set(m._streamed) & set(m.provider.readahead._positions)
        for _ in range(2):
            assert_same(m.run(feeds), want)
        assert m.provider.stats["streams"] >= 2 * len(m._streamed)
    with FaultProxy(int(url.rsplit(":", 1)[1]), seed=4, rate=0.1, stall_seconds=1.0) as proxy:
        p = Http(f"{proxy.url}/unet", budget_bytes=0, stream=True, **FAST)
        with Model(f"{proxy.url}/unet", provider=p, options=opts) as m:
            for _ in range(3):
                assert_same(m.run(feeds), want)
        assert set(proxy.faults()) == set(KINDS), proxy.faults()


def test_weights_url_and_errors_for_missing_things(served):
    _, url = served
    with Http(f"{url}/conv/{WEIGHTS_FILE}") as h:
        assert len(h.index) > 0
    with pytest.raises(WeightsError, match=r"/nope/weights.bin.*404"):
        Http(f"{url}/nope", **FAST)
    with pytest.raises(ValueError, match="not an http"):
        Http("/tmp/model")
    with Http(f"{url}/conv") as h, pytest.raises(WeightsError, match="not in weights file"):
        h.get("no such tensor")


# --- HTTPS ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served_tls(served, tmp_path_factory):
    """The same models over HTTPS: a second nginx with a certificate from a throwaway CA.
    (CA file, base URL)."""
    import shutil
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed (bash scripts/setup.sh --test)")
    root, _ = served
    work = tmp_path_factory.mktemp("nginx_tls")
    tls = make_tls_files(work / "tls")
    proc, port = start_nginx(root, work, tls=tls)
    yield tls["ca"], f"https://127.0.0.1:{port}"
    stop_nginx(proc)


def test_https_with_a_private_ca_is_bitwise_disk(served_tls, disk_unet):
    import ssl
    ca, url = served_tls
    p = Http(f"{url}/unet", ssl_context=ssl.create_default_context(cafile=ca))
    for got in run_model(f"{url}/unet", p, unet_feeds(), runs=2):
        assert_same(got, disk_unet)
    assert not p.stats["failures"]


def test_https_ca_from_ssl_cert_file_for_a_plain_model_url(served_tls, disk_unet, monkeypatch):
    """Model("https://...") with no provider object: the default context reads SSL_CERT_FILE."""
    ca, url = served_tls
    monkeypatch.setenv("SSL_CERT_FILE", ca)
    assert_same(run_model(f"{url}/unet", "prefetch", unet_feeds())[0], disk_unet)


def test_https_untrusted_certificate_is_one_clear_error_at_once(served_tls):
    """A certificate the context does not accept fails the same way every time: an error
    naming the URL and the cause, with the way out, and no retries (they would back off for
    seconds)."""
    _, url = served_tls
    t0 = time.monotonic()
    with pytest.raises(WeightsError) as ei:
        Http(f"{url}/unet", retries=6, backoff=1.0)
    msg = str(ei.value)
    assert time.monotonic() - t0 < 1.0, msg
    assert url in msg and "certificate" in msg and "ssl_context" in msg and "gave up" not in msg, msg


# --- redirects (a hub answering 302 to a CDN) ----------------------------------------------------

@pytest.fixture(scope="module")
def hub(served, tmp_path_factory):
    """One nginx, two servers: the files on port P ("the CDN", asked for as localhost), and on
    port Q a "hub" answering every request with 302 to the same path on the CDN; /loop/
    redirects to itself. Both log each request with its Authorization header.
    (hub URL, CDN port, hub port, log file)."""
    root, _ = served
    work = tmp_path_factory.mktemp("nginx_hub")
    cdn, q, private = _free_port(), _free_port(), _free_port()
    extra = f"""server {{
        listen 127.0.0.1:{q};
        location /loop/ {{ return 302 http://127.0.0.1:{q}$request_uri; }}
        location / {{ return 302 http://localhost:{cdn}$request_uri; }}
    }}
    server {{
        listen 127.0.0.1:{private};
        root {Path(root).resolve()};
        location / {{ if ($http_authorization != "Bearer s3cret") {{ return 401; }} }}
    }}"""
    log = work / "requests.log"
    proc, _ = start_nginx(root, work, port=cdn, extra=extra, access_log=str(log))
    yield f"http://127.0.0.1:{q}", cdn, q, log, f"http://127.0.0.1:{private}"
    stop_nginx(proc)


def test_redirect_to_a_cdn_is_followed_and_the_token_stays_with_the_hub(hub, disk_unet, monkeypatch):
    url, cdn, q, log, _ = hub
    monkeypatch.setenv("HUB_TOKEN", "s3cret")
    start = len(log.read_text().splitlines()) if log.exists() else 0
    p = Http(f"{url}/unet", token_env="HUB_TOKEN")
    assert_same(run_model(f"{url}/unet", p, unet_feeds())[0], disk_unet)
    assert p.url == f"http://localhost:{cdn}/unet/{WEIGHTS_FILE}"
    lines = log.read_text().splitlines()[start:]
    at_hub = [ln for ln in lines if ln.startswith(f"{q} ")]
    at_cdn = [ln for ln in lines if ln.startswith(f"{cdn} ")]
    assert at_hub and all(ln.endswith('"Bearer s3cret"') for ln in at_hub), at_hub
    assert at_cdn and all(ln.endswith('"-"') for ln in at_cdn), at_cdn[:3]
    # the hub is asked once per file (the index's first request, graph.txt twice): the tensors
    # go straight to the CDN
    assert len(at_hub) <= 3 < len(at_cdn), (len(at_hub), len(at_cdn))


def test_cli_token_env_for_a_server_that_needs_a_token(hub, served, tmp_path):
    """`onnxstream run URL --token-env NAME`: without it the server's 401 is one clear error;
    with it the model runs, bitwise the disk provider's."""
    private = hub[4]
    root, _ = served
    np.save(tmp_path / "x.npy", CONV_FEEDS["x"])
    cmd = [sys.executable, "-m", "onnxstream_py.cli", "run", f"{private}/conv", "--input",
           f"x={tmp_path / 'x.npy'}", "--output-dir", str(tmp_path / "out")]
    env = {**os.environ, "HUB_TOKEN": "s3cret"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1 and "HTTP 401" in r.stderr and f"{private}/conv" in r.stderr, r.stderr
    r = subprocess.run(cmd + ["--token-env", "HUB_TOKEN"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    want = run_model(str(root / "conv"), "nocache", CONV_FEEDS)[0]["y"]
    assert np.load(tmp_path / "out" / "y.npy").tobytes() == want.tobytes()


def test_redirect_loop_is_one_clear_error(hub):
    url = hub[0]
    t0 = time.monotonic()
    with pytest.raises(WeightsError, match="more than 5 redirects") as ei:
        Http(f"{url}/loop/unet")
    assert "/loop/unet" in str(ei.value) and time.monotonic() - t0 < 5


# --- faults ------------------------------------------------------------------------------------

def test_fault_proxy_ten_runs_identical(served, disk_unet):
    """>= 1 fault per 20 requests, every kind; 10 consecutive runs, all bitwise identical."""
    root, url = served
    with FaultProxy(int(url.rsplit(":", 1)[1]), seed=7, rate=0.15, stall_seconds=1.0) as proxy:
        from onnxstream_py import Model
        p = Http(f"{proxy.url}/unet", budget_bytes=64 * 1024, merge_bytes=8 * 1024, **FAST)
        with Model(f"{proxy.url}/unet", provider=p) as m:
            for _ in range(10):
                assert_same(m.run(unet_feeds()), disk_unet)
        faults = proxy.faults()
        requests = len(proxy.log)
    assert set(faults) == set(KINDS), faults
    assert requests >= 60 and sum(faults.values()) * 20 >= requests, (faults, requests)
    assert sum(p.stats["failures"].values()) >= sum(faults.values()) - 2   # (a last stall may be unread)


@pytest.mark.parametrize("budget, parallel", [(0, 1), (8 << 20, 1), (0, 2), (8 << 20, 3)])
def test_faults_in_big_tensors_resume_and_verify(served, budget, parallel):
    """Every fault kind on multi-MiB bodies: drops and stalls resume the missing bytes; with
    parallel ranges each part resumes on its own and a corrupted one re-fetches the tensor."""
    _, url = served
    blobs = make_blobs()
    order = list(blobs) * 3
    with FaultProxy(int(url.rsplit(":", 1)[1]), seed=5, rate=0.3, stall_seconds=1.0) as proxy:
        with Http(f"{proxy.url}/blobs", budget_bytes=budget, merge_bytes=64 * 1024, parallel=parallel,
                  connections=parallel + 1, **FAST) as h:
            h.plan(order)
            for run in range(3):
                h.restart()
                for name in order:
                    a = h.get(name)
                    assert a.dtype == blobs[name].dtype and a.shape == blobs[name].shape
                    assert a.tobytes() == blobs[name].tobytes(), name
                    h.release(name)
            fails = h.stats["failures"]
        assert set(proxy.faults()) == set(KINDS), proxy.faults()
    assert {"short body", "ConnectionResetError", "timed out", "checksum mismatch"} <= set(fails), fails


def test_server_ignoring_range_is_read_without_buffering(served, disk_unet):
    root, url = served
    with FaultProxy(int(url.rsplit(":", 1)[1]), strip_range=True) as proxy:
        p = Http(f"{proxy.url}/unet", budget_bytes=0, **FAST)
        got = run_model(f"{proxy.url}/unet", p, unet_feeds())[0]
        assert_same(got, disk_unet)
        assert p.stats["range_ignored"]
        # each request stopped after the bytes it needed: far less than a whole file per request
        size = os.path.getsize(root / "unet" / WEIGHTS_FILE)
        assert p.stats["bytes_received"] < size * len(proxy.log) / 2


def test_corrupted_bytes_never_give_an_output(served):
    _, url = served
    with FaultProxy(int(url.rsplit(":", 1)[1]), seed=3, rate=1.0, kinds=("flip",)) as proxy:
        t0 = time.monotonic()
        with pytest.raises(WeightsError) as ei:
            run_model(f"{proxy.url}/conv", Http(f"{proxy.url}/conv", retries=2, backoff=0.01, timeout=2),
                      CONV_FEEDS)
        msg = str(ei.value)
    # the index is fetched until two copies agree: with every body corrupted they never do
    assert proxy.url in msg and ("differ" in msg or "checksum" in msg), msg
    assert time.monotonic() - t0 < 30


def test_checksum_mismatch_names_url_tensor_and_cause(served):
    _, url = served
    h = Http(f"{url}/conv", retries=1, backoff=0.01, budget_bytes=0)
    try:
        with FaultProxy(int(url.rsplit(":", 1)[1]), rate=1.0, kinds=("flip",)) as proxy:
            h.url = f"{proxy.url}/conv/{WEIGHTS_FILE}"       # index read cleanly, tensors corrupted
            name = next(iter(h.index.entries))
            with pytest.raises(WeightsError) as ei:
                h.get(name)
        msg = str(ei.value)
        assert h.url in msg and repr(name) in msg and "checksum mismatch" in msg and "2 attempts" in msg
    finally:
        h.close()


@pytest.mark.parametrize("kind", ["refused", "hung"])
def test_dead_server_is_a_clear_error_within_the_deadline(kind):
    deadline = 2.0
    hole = None
    if kind == "refused":
        port = _free_port()              # nothing listens there
    else:
        hole = Blackhole()
        port = hole.port
    try:
        t0 = time.monotonic()
        with pytest.raises(WeightsError) as ei:
            Http(f"http://127.0.0.1:{port}/m", timeout=0.3, retries=50, backoff=0.05, deadline=deadline)
        elapsed = time.monotonic() - t0
    finally:
        if hole is not None:
            hole.close()
    msg = str(ei.value)
    assert f"127.0.0.1:{port}/m/weights.bin" in msg and "weights index" in msg
    assert ("refused" in msg.lower() or "deadline" in msg) if kind == "refused" else ("deadline" in msg or "timed out" in msg)
    # the probe's deadline, with slack for a loaded machine
    assert elapsed < deadline + 1.5, elapsed


def test_dead_server_through_model_is_bounded():
    from onnxstream_py import Model
    port = _free_port()
    t0 = time.monotonic()
    with pytest.raises(WeightsError, match="graph.txt"):
        Model(f"http://127.0.0.1:{port}/m", provider="prefetch")
    assert time.monotonic() - t0 < 30     # default backoff: 6 retries, at most 0.25*(1+2+..+32) s


def test_retry_after_is_honoured(served):
    _, url = served
    with FaultProxy(int(url.rsplit(":", 1)[1]), seed=2, rate=0.5, kinds=("429",), retry_after="1") as proxy:
        t0 = time.monotonic()
        with Http(f"{proxy.url}/conv", budget_bytes=0, backoff=0.001, max_backoff=0.001) as h:
            for name in list(h.index.entries)[:3]:
                h.get(name)
            n429 = h.stats["failures"].get("HTTP 429 Too Many Requests", 0)
        waited = time.monotonic() - t0
    assert n429 >= 1
    assert waited >= 0.9 * n429, (waited, n429)


def test_bearer_token_only_when_the_variable_is_set(served, monkeypatch):
    _, url = served
    seen = []
    with FaultProxy(int(url.rsplit(":", 1)[1])) as proxy:
        orig = proxy._forward

        def spy(client, request, fault):
            seen.append(request.decode("latin-1"))
            return orig(client, request, fault)

        proxy._forward = spy
        monkeypatch.delenv("OSN_TEST_TOKEN", raising=False)
        Http(f"{proxy.url}/conv", token_env="OSN_TEST_TOKEN").close()
        assert seen and not any("authorization" in r.lower() for r in seen)
        seen.clear()
        monkeypatch.setenv("OSN_TEST_TOKEN", "s3cret")
        Http(f"{proxy.url}/conv", token_env="OSN_TEST_TOKEN").close()
        assert seen and all("Authorization: Bearer s3cret" in r for r in seen)


# --- nothing on disk ---------------------------------------------------------------------------

def test_no_file_is_opened_or_written_during_a_run(served, disk_unet, monkeypatch, tmp_path):
    root, url = served
    from onnxstream_py import Model
    listing = lambda: sorted((str(p), p.stat().st_size) for p in root.rglob("*"))  # noqa: E731
    before = listing()
    opened = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, mode="r", *a, **k):
        opened.append((str(file), mode))
        return real_open(file, mode, *a, **k)

    def spy_os_open(path, flags, *a, **k):
        opened.append((str(path), flags))
        return real_os_open(path, flags, *a, **k)

    def written() -> int:
        with real_open("/proc/self/io") as f:
            return int(next(ln for ln in f if ln.startswith("write_bytes:")).split()[1])

    with Model(f"{url}/unet", provider="prefetch") as m:
        w0 = written()
        monkeypatch.setattr(builtins, "open", spy_open)
        monkeypatch.setattr(os, "open", spy_os_open)
        out = m.run(unet_feeds())
        out2 = m.run(unet_feeds())
        monkeypatch.undo()
        assert written() == w0
    # the engine reads /proc/self/statm for its memory accounting; nothing else is opened
    assert [o for o in opened if not o[0].startswith("/proc/self/")] == []
    assert all(o[1] in ("r", "rb", os.O_RDONLY) for o in opened), opened[:5]
    assert_same(out, disk_unet)
    assert_same(out2, disk_unet)
    assert listing() == before
    # the provider itself opens no file at all, from construction to close
    opened.clear()
    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    with Http(f"{url}/unet") as h:
        for name in list(h.index.entries)[:10]:
            h.get(name)
        h.fetch_text(f"{url}/unet/graph.txt")
    monkeypatch.undo()
    assert opened == []


def sd_folder(root: Path) -> Path:
    """The tiny SD pipeline converted under the served root (once per module)."""
    from onnxstream_py.sd.cli import DEMO_EXPORT
    from onnxstream_py.sd.convert import convert_sd
    if not (root / "sd").exists():
        convert_sd(DEMO_EXPORT, str(root / "sd"), log=lambda m: None, w8a8_vae=None)
    return root / "sd"


def test_sd_pipeline_over_http_is_bitwise_disk(served, tmp_path_factory):
    from onnxstream_py.sd import pipeline as pl
    root, url = served
    sd_folder(root)
    params = pl.GenerationParams(prompt="a red fox in the snow", negative_prompt="ugly", steps=3, seed=7,
                                 width=64, height=48)

    def latents_and_image(path):
        sd = pl.StableDiffusion(path, progress=False)      # tokenizer, scheduler and networks over HTTP
        cond, uncond = sd.encode_prompts(params.prompt, params.negative_prompt)
        z = sd.denoise(cond, uncond, params)
        return z, sd.decode(z)

    z_disk, img_disk = latents_and_image(str(root / "sd"))
    z_http, img_http = latents_and_image(f"{url}/sd")
    assert z_http.tobytes() == z_disk.tobytes()
    assert img_http.tobytes() == img_disk.tobytes()


def test_cli_sd_from_a_server_that_needs_a_token(hub, served, tmp_path):
    """`onnxstream sd --models-path URL --token-env NAME`: the manifest, configs, tokenizer and
    networks all come from a server answering 401 without the token; the PNG is the one made
    from the local folder, byte for byte."""
    private = hub[4]
    root, _ = served
    sd_folder(root)
    env = {**os.environ, "HUB_TOKEN": "s3cret"}

    def sd(models, out, *extra):
        return subprocess.run([sys.executable, "-m", "onnxstream_py.cli", "sd", "--models-path", models,
                               "--prompt", "a red fox", "--steps", "2", "--seed", "3", "--width", "64",
                               "--height", "48", "--output", str(out), *extra],
                              capture_output=True, text=True, timeout=300, env=env)

    r = sd(str(root / "sd"), tmp_path / "disk.png")
    assert r.returncode == 0, r.stderr
    r = sd(f"{private}/sd", tmp_path / "none.png")
    assert r.returncode == 1 and "HTTP 401" in r.stderr, r.stderr
    r = sd(f"{private}/sd", tmp_path / "http.png", "--token-env", "HUB_TOKEN")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "http.png").read_bytes() == (tmp_path / "disk.png").read_bytes()


# --- CLI and the SD pipeline -------------------------------------------------------------------

def test_cli_run_accepts_a_url(served, tmp_path):
    root, url = served
    np.save(tmp_path / "x.npy", CONV_FEEDS["x"])
    r = subprocess.run([sys.executable, "-m", "onnxstream_py.cli", "run", f"{url}/conv", "--input",
                        f"x={tmp_path / 'x.npy'}", "--output-dir", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    want = run_model(str(root / "conv"), "nocache", CONV_FEEDS)[0]["y"]
    assert np.load(tmp_path / "out" / "y.npy").tobytes() == want.tobytes()
