"""Http: run a converted model straight from a web server, nothing written to disk.

A converted model directory (graph.txt + weights.bin) served by any static HTTP(S) server
that honours Range requests (nginx, a CDN, a model hub). ``Http(base_url)`` reads the
self-describing index at the start of weights.bin with one small Range request, then
fetches tensors with Range requests as the engine asks for them, read ahead in plan order
within ``budget_bytes`` on a background thread (readahead.ReadAhead, shared with
DiskPrefetch). Small tensors that sit next to each other in the file (the converter writes
them in first-use order) are fetched in one request of at most ``merge_bytes``.

Trade-offs and rules:
  * Memory: what DiskPrefetch holds (the read-ahead budget), plus one merged span, plus at
    most two mappings of tensors the engine dropped, kept briefly to receive the next
    downloads (_Mappings: fresh pages cost a kernel zeroing pass). A downloaded tensor is
    anonymous memory, not page cache: nothing accumulates and nothing touches the disk.
  * Integrity: every tensor's CRC-32 is checked on every fetch (the network is not the
    page cache; ``verify="never"`` turns it off), computed piece by piece as the bytes
    arrive; a tensor fetched as parallel ranges combines its ranges' CRCs (crc32_combine).
    A mismatch is a retry, never an output.
    The text parts (the index, graph.txt) have no checksum, so they are fetched twice
    and must agree byte for byte (``fetch_text``): a corrupting path cannot slip a wrong
    offset or attribute past us; this costs one extra small request per file.
  * Faults: connection errors, timeouts, 5xx, 429 and short bodies are retried with
    exponential backoff and full jitter (sleep uniform(0, min(max_backoff, backoff*2^k))),
    a Retry-After is honoured up to ``retry_after_cap`` seconds; a short body resumes with
    a Range for the missing bytes only. Other 4xx (404, 401, 403, 416) are not retried.
    After ``retries`` failed attempts, or past ``deadline`` seconds for one request, one
    WeightsError names the URL, the tensor and the last cause.
  * Timeouts everywhere: ``timeout`` bounds connecting and every socket read, ``deadline``
    the whole of one tensor (or merged span) including retries and backoff sleeps; a
    server that trickles bytes is cut off at the deadline. So a dead server is an error
    after at most ``deadline`` seconds, never a hang.
  * A server that ignores Range (200 with the whole file) is detected: the bytes before
    the wanted range are read and discarded in 1 MiB pieces, the wanted bytes read, and the
    connection closed (never buffering the body). Correct but slow (each tensor re-reads
    the file from its start); ``range_ignored`` tells.
  * Streaming (``stream=True``): tensors above the read-ahead budget are read by rows, a
    chunk at a time with the next one downloading, and checked when their last rows arrive
    (a mismatch is WeightsRetry: the engine reruns the op); see the Http docstring.
  * Connections: ``connections`` keep-alive http.client connections (the read-ahead thread
    and the engine thread each use one; one more for the streaming thread), HTTPS through
    ssl's default context (certificate and host name verified; ``ssl_context`` for another;
    a rejected certificate is not retried). ``token_env="HF_TOKEN"`` sends ``Authorization: Bearer $HF_TOKEN``
    when that variable is set. Redirects are followed for the first requests of a file
    (a hub answering 302 to a CDN); the token is sent only to the original host.

Depends on the standard library and numpy only.
"""
from __future__ import annotations

import email.utils
import http.client
import mmap
import os
import random
import re
import socket
import ssl
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence
from urllib.parse import urljoin, urlsplit

import numpy as np

from .base import WeightsProvider
from .format import (ALIGN, WEIGHTS_FILE, TensorEntry, WeightsError, WeightsIndex, WeightsRetry, crc32,
                     decode_rows, decode_tensor, row_run)
from .readahead import ReadAhead
from .tensorfile import verify_mode

MiB = 1 << 20
PIECE = MiB                 # bytes per socket read: the deadline is checked between pieces
MAX_IDLE_ALLOCATIONS = 8    # a dropped download's mapping waits this many downloads for reuse
PART_BYTES = 2 * MiB        # a tensor is fetched as parallel ranges of at least this many bytes
HEAD_GUESS = ALIGN * 64     # first range of weights.bin: most indexes fit; grown when not
MAX_TEXT_BYTES = 1 << 30    # graph.txt larger than this is refused (a wrong URL, not a graph)
MAX_REDIRECTS = 5
MMAP_MIN_BYTES = 1 << 16    # downloads at least this big get their own mapping (_Mappings)
PAGE = mmap.PAGESIZE


_CRC_POLY = 0xEDB88320     # CRC-32's polynomial, reflected (bit 31 is x^0)


def _gf2_mul(a: int, b: int) -> int:
    """a * b modulo CRC-32's polynomial, both in the reflected bit order."""
    product = 0
    for i in range(32):
        if a & (0x80000000 >> i):      # the coefficient of x^i in a
            product ^= b
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1   # b *= x
    return product


_X_POW = [0x00800000]      # x^(8 * 2^k) mod P for k = 0..63: x^8, then repeated squares
for _ in range(63):
    _X_POW.append(_gf2_mul(_X_POW[-1], _X_POW[-1]))


def crc32_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """zlib.crc32(a + b) from zlib.crc32(a), zlib.crc32(b) and len(b), without the bytes.

    The register after ``a`` runs on through ``b``: crc(a + b) = crc(a) * x^(8 len_b) + crc(b)
    over GF(2) modulo the polynomial (zlib's pre- and post-inversion cancel). A tensor fetched
    as parallel ranges is checked against its one CRC this way."""
    k = 0
    while len_b:
        if len_b & 1:
            crc_a = _gf2_mul(crc_a, _X_POW[k])
        len_b >>= 1
        k += 1
    return crc_a ^ crc_b


_default_token_env: str | None = None


def set_default_token_env(name: str | None) -> None:
    """Clients made without ``token_env`` (a plain model URL, the SD pipeline's configs and
    tokenizer) send ``Authorization: Bearer $name`` when that variable is set; the CLI's
    ``--token-env``. None: no token unless a client is given one."""
    global _default_token_env
    _default_token_env = name or None


def is_url(path) -> bool:
    """Whether ``path`` is an http:// or https:// URL (a model path may be one)."""
    return isinstance(path, str) and path[:8].lower().startswith(("http://", "https://"))


def join_url(base: str, name: str) -> str:
    """``base`` (a model directory URL, with or without a trailing slash) + ``/name``."""
    return base.rstrip("/") + "/" + name


class _Retry(Exception):
    """A transient failure: worth another attempt (``retry_after`` seconds if the server said)."""

    def __init__(self, cause: str, retry_after: float | None = None, got: int = 0):
        super().__init__(cause)
        self.retry_after = retry_after
        self.got = got      # bytes that did arrive before the failure (kept: resumed from there)


class _Fatal(Exception):
    """A failure another attempt will not fix (404, 403, 416, a malformed answer)."""


class _Redirect(Exception):
    """The server moved the file: ask ``url`` instead."""

    def __init__(self, url: str):
        super().__init__(url)
        self.url = url


class _Client:
    """Keep-alive connections to one server with retried, deadline-bounded GETs.

    Thread-safe: at most ``connections`` requests run at once (a semaphore); idle
    connections are reused, a connection whose response was not read to its end is closed.
    """

    def __init__(self, connections: int = 2, timeout: float = 10.0, retries: int = 6,
                 deadline: float = 300.0, backoff: float = 0.25, max_backoff: float = 8.0,
                 retry_after_cap: float = 30.0, token_env: str | None = None, seed: int | None = None,
                 ssl_context: ssl.SSLContext | None = None):
        if connections < 1:
            raise ValueError(f"Http: connections must be >= 1, got {connections}")
        if timeout <= 0 or deadline <= 0:
            raise ValueError(f"Http: timeout and deadline must be > 0 seconds, got {timeout}, {deadline}")
        if retries < 0:
            raise ValueError(f"Http: retries must be >= 0, got {retries}")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.deadline = float(deadline)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.retry_after_cap = float(retry_after_cap)
        token_env = token_env or _default_token_env
        self._token = os.environ.get(token_env) if token_env else None
        self._token_host: str | None = None   # the token goes to the first host only
        self._sem = threading.BoundedSemaphore(connections)
        self._lock = threading.Lock()
        self._idle: dict[tuple, list[http.client.HTTPConnection]] = {}
        self._ssl: ssl.SSLContext | None = ssl_context
        self._rng = random.Random(seed)
        self._closed = False
        # statistics (tests, benchmarks)
        self.requests = 0
        self.failures: dict[str, int] = {}
        self.bytes_received = 0
        self.range_ignored = False

    # --- connections ---------------------------------------------------------------------

    def _key(self, url: str) -> tuple:
        u = urlsplit(url)
        scheme = u.scheme.lower()
        if scheme not in ("http", "https") or not u.hostname:
            raise _Fatal(f"not an http(s) URL: {url!r}")
        return scheme, u.hostname, u.port or (443 if scheme == "https" else 80)

    def _connect(self, key: tuple, timeout: float) -> http.client.HTTPConnection:
        scheme, host, port = key
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop()
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def _keep(self, key: tuple, conn) -> None:
        with self._lock:
            if not self._closed:
                self._idle.setdefault(key, []).append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for c in conns:
                c.close()

    # --- one attempt -----------------------------------------------------------------------

    def _headers(self, url: str, first: int | None, last: int | None) -> dict:
        h = {"Accept-Encoding": "identity", "User-Agent": "onnxstream_py"}
        if first is not None:
            h["Range"] = f"bytes={first}-{last}"
        host = urlsplit(url).hostname
        if self._token and (self._token_host is None or host == self._token_host):
            self._token_host = host
            h["Authorization"] = f"Bearer {self._token}"
        return h

    def _attempt(self, url: str, first: int, dest: memoryview | None, t_end: float,
                 redirects: list, crc: list | None = None) -> tuple[int, bytes | None]:
        """One GET. With ``dest``: bytes [first, first+len(dest)) into dest, returns how many
        arrived (fewer on a short body), continuing the running CRC-32 in ``crc[0]`` (if given)
        over them. Without: the whole body (graph.txt), returns (n, body)."""
        key = self._key(url)
        remaining = t_end - time.monotonic()
        if remaining <= 0:
            raise _Retry("deadline reached")
        if not self._sem.acquire(timeout=remaining):
            raise _Retry("no free connection before the deadline")
        conn = None
        reusable = False
        try:
            conn = self._connect(key, min(self.timeout, remaining))
            conn.timeout = min(self.timeout, remaining)
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            u = urlsplit(url)
            target = (u.path or "/") + (f"?{u.query}" if u.query else "")
            want = None if dest is None else len(dest)
            headers = self._headers(url, None if dest is None else first,
                                    None if dest is None else first + want - 1)
            with self._lock:
                self.requests += 1
            try:
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
            except ssl.SSLCertVerificationError:
                raise                  # not worth a retry: see below
            except (OSError, http.client.HTTPException) as e:
                raise _Retry(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
            status = resp.status
            if status in (301, 302, 303, 307, 308):
                loc = resp.getheader("Location")
                reusable = _drain_small(resp) and not resp.will_close
                if not loc or len(redirects) >= MAX_REDIRECTS:
                    raise _Fatal(f"HTTP {status}: redirect without a Location, or more than "
                                 f"{MAX_REDIRECTS} redirects")
                redirects.append(urljoin(url, loc))
                raise _Redirect(redirects[-1])
            if status == 429 or status >= 500:
                retry_after = _retry_after(resp.getheader("Retry-After"))
                reusable = _drain_small(resp) and not resp.will_close
                raise _Retry(f"HTTP {status} {resp.reason}".strip(), retry_after)
            if dest is None:
                if status != 200:
                    _drain_small(resp)
                    raise _Fatal(f"HTTP {status} {resp.reason}".strip())
                length = resp.getheader("Content-Length")
                if length is not None and int(length) > MAX_TEXT_BYTES:
                    raise _Fatal(f"body of {length} bytes is too large for a text file")
                body = self._read_body(resp, t_end)
                reusable = not resp.will_close
                return len(body), body
            if status == 206:
                start, total = _content_range(resp.getheader("Content-Range"))
                if start != first:
                    raise _Retry(f"Content-Range starts at {start}, asked for {first}")
                if total is not None:
                    self.file_size = total
                got = self._read_into(resp, dest, t_end, crc)
                reusable = got == want and not resp.will_close and resp.isclosed()
                return got, None
            if status == 200:
                # Range ignored: the whole file follows. Skip to ``first``, read what we want,
                # close the connection (never read or buffer the rest of the body).
                self.range_ignored = True
                length = resp.getheader("Content-Length")
                if length is not None:
                    self.file_size = int(length)
                if not self._skip(resp, first, t_end):
                    raise _Retry(f"body ended before byte {first} (server ignores Range)")
                return self._read_into(resp, dest, t_end, crc), None
            _drain_small(resp)
            raise _Fatal(f"HTTP {status} {resp.reason}".strip())
        except (socket.timeout, TimeoutError) as e:
            raise _Retry(f"timed out ({e})" if str(e) else "timed out") from None
        except ssl.SSLCertVerificationError as e:
            # the same certificate every time: another attempt cannot succeed
            raise _Fatal(f"TLS certificate not accepted ({e.verify_message or e}); for a private CA pass "
                         f"Http(..., ssl_context=ssl.create_default_context(cafile=...)) or set "
                         f"SSL_CERT_FILE") from None
        except (OSError, http.client.HTTPException) as e:
            raise _Retry(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
        finally:
            if conn is not None:
                if reusable:
                    self._keep(key, conn)
                else:
                    conn.close()
            self._sem.release()

    def _read_into(self, resp, dest: memoryview, t_end: float, crc: list | None = None) -> int:
        """Fill ``dest`` from the body in PIECE reads; stop early (short body) at EOF or on a
        dropped connection, returning the bytes that did arrive; raise at the deadline.
        ``crc[0]`` (if given) is continued over each piece as it arrives, while it is still in
        the cache: no second pass over the tensor, and it always covers exactly the bytes
        that arrived, so a resumed range continues it."""
        got = 0
        n = len(dest)
        try:
            while got < n:
                if time.monotonic() > t_end:
                    raise _Retry(f"deadline reached after {got} of {n} bytes")
                k = resp.readinto(dest[got:min(n, got + PIECE)])
                if not k:
                    break
                if crc is not None:
                    crc[0] = crc32(dest[got:got + k], crc[0])
                got += k
        except (OSError, http.client.HTTPException) as e:
            with self._lock:
                self.bytes_received += got
            if got == 0:
                raise
            # the bytes that arrived are kept: the caller resumes from there
            what = "timed out" if isinstance(e, (socket.timeout, TimeoutError)) else type(e).__name__
            raise _Retry(f"{what} after {got} of {n} bytes", got=got) from None
        with self._lock:
            self.bytes_received += got
        return got

    def _skip(self, resp, count: int, t_end: float) -> bool:
        scratch = memoryview(bytearray(min(PIECE, max(count, 1))))
        while count > 0:
            if time.monotonic() > t_end:
                raise _Retry("deadline reached skipping to the range (server ignores Range)")
            k = resp.readinto(scratch[:min(count, len(scratch))])
            if not k:
                return False
            count -= k
        return True

    def _read_body(self, resp, t_end: float) -> bytes:
        parts, total = [], 0
        while True:
            if time.monotonic() > t_end:
                raise _Retry("deadline reached reading the body")
            chunk = resp.read(PIECE)
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
            if total > MAX_TEXT_BYTES:
                raise _Fatal("body too large for a text file")
        length = resp.getheader("Content-Length")
        if length is not None and total != int(length):
            raise _Retry(f"short body ({total} of {length} bytes)")
        return b"".join(parts)

    # --- retried operations -----------------------------------------------------------------

    def _back_off(self, url: str, what: str, attempt: int, err: _Retry, t_end: float) -> None:
        """After failed attempt ``attempt``: count the cause, then sleep before the next one, or
        raise the one clear WeightsError when the retry budget or the deadline is spent."""
        self._note(str(err))
        if attempt >= self.retries:
            raise WeightsError(f"{url}: {what}: gave up after {attempt + 1} attempts; last cause: {err}") from None
        try:
            self._sleep_before_retry(attempt, err, t_end)
        except _Retry as late:
            raise WeightsError(f"{url}: {what}: {late}") from None

    def _sleep_before_retry(self, attempt: int, err: _Retry, t_end: float) -> None:
        if err.retry_after is not None:
            delay = min(err.retry_after, self.retry_after_cap)
        else:  # full jitter
            delay = self._rng.uniform(0.0, min(self.max_backoff, self.backoff * 2 ** attempt))
        if time.monotonic() + delay > t_end:
            raise _Retry(f"deadline of {self.deadline:g} s would pass while backing off after: {err}")
        time.sleep(delay)

    def _note(self, cause: str) -> None:
        kind = re.split(r" \(| after | in tensor |:", cause)[0][:40]
        with self._lock:
            self.failures[kind] = self.failures.get(kind, 0) + 1

    def fetch_range(self, url: str, first: int, dest: memoryview, what: str,
                    t_end: float | None = None, check=None, crc: list | None = None) -> str:
        """Fill ``dest`` with bytes [first, first + len(dest)) of ``url``, retrying.

        ``crc`` (optional, a one-element list): left holding the CRC-32 of ``dest``, computed
        as the bytes arrive. ``check()`` (optional) validates the filled buffer (and crc) and
        returns an error text or None; an error is a retry of the whole range. Returns the URL
        the bytes came from (after redirects). Raises WeightsError naming ``url``, ``what``
        and the cause at the end.
        """
        t_end = time.monotonic() + self.deadline if t_end is None else t_end
        got, attempt, n = 0, 0, len(dest)
        redirects: list[str] = []
        if crc is not None:
            crc[0] = 0
        while True:
            try:
                k, _ = self._attempt(url, first + got, dest[got:], t_end, redirects, crc)
                got += k
                if got < n:
                    raise _Retry(f"short body ({got} of {n} bytes)")
                bad = check() if check is not None else None
                if bad is None:
                    return url
                got = 0
                if crc is not None:
                    crc[0] = 0
                raise _Retry(bad)
            except _Redirect as r:
                url = r.url
                continue
            except _Fatal as e:
                raise WeightsError(f"{url}: {what}: {e}") from None
            except _Retry as e:
                got += e.got
                self._back_off(url, what, attempt, e, t_end)
                attempt += 1

    def fetch_text(self, url: str, what: str) -> bytes:
        """The whole body of ``url`` (a small file), fetched twice until two copies agree."""
        t_end = time.monotonic() + self.deadline
        attempt, previous = 0, None
        redirects: list[str] = []
        while True:
            try:
                n, body = self._attempt(url, 0, None, t_end, redirects)
                if previous is not None and body == previous:
                    return body
                if previous is not None:
                    previous = body
                    raise _Retry("two downloads differ (corrupted in transit or changing)")
                previous = body
                continue
            except _Redirect as r:
                url = r.url
                continue
            except _Fatal as e:
                raise WeightsError(f"{url}: {what}: {e}") from None
            except _Retry as e:
                self._back_off(url, what, attempt, e, t_end)
                attempt += 1

    file_size: int | None = None


def _drain_small(resp, limit: int = 64 * 1024) -> bool:
    """Read an error body if it is small; True when it was read whole (the connection may
    then be reused), False when it was left (the caller closes the connection)."""
    try:
        length = resp.getheader("Content-Length")
        if length is not None and int(length) <= limit:
            resp.read()
            return resp.isclosed()
    except (OSError, ValueError, http.client.HTTPException):
        pass
    return False


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _content_range(value: str | None) -> tuple[int, int | None]:
    """(first byte, total size or None) of a ``Content-Range: bytes a-b/total`` header."""
    try:
        unit, _, rest = value.strip().partition(" ")
        span, _, total = rest.partition("/")
        if unit != "bytes":
            raise ValueError(unit)
        return int(span.split("-")[0]), (None if total.strip() == "*" else int(total))
    except (AttributeError, ValueError):
        raise _Retry(f"malformed Content-Range {value!r}") from None


def fetch_text(url: str, *, timeout: float = 10.0, retries: int = 6, deadline: float = 300.0,
               token_env: str | None = None, what: str | None = None,
               ssl_context: ssl.SSLContext | None = None) -> str:
    """A small text file (graph.txt, a JSON config) from ``url``, as str; WeightsError on failure.
    Fetched twice and compared, since text has no checksum (see the module doc)."""
    client = _Client(1, timeout, retries, deadline, token_env=token_env, ssl_context=ssl_context)
    try:
        body = client.fetch_text(url, what or os.path.basename(urlsplit(url).path) or url)
    finally:
        client.close()
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WeightsError(f"{url}: not UTF-8 text ({e})") from None


class Http(WeightsProvider):
    """Serves the tensors of ``base_url``/weights.bin over HTTP(S) Range requests.

    ``base_url``: the model directory's URL (or the weights file's URL, ending in ``.bin``).
    ``budget_bytes``: read-ahead budget (0: fetch each tensor when asked, the least memory).
    ``connections``: keep-alive connections (2: the read-ahead thread and the engine's; with
        ``parallel`` > 1, parallel + 1).
    ``parallel``: ranges one big tensor is fetched as at once, on as many connections (each of
        about PART_BYTES or more). 1 (default): never split; on 127.0.0.1 the copy is CPU-bound
        and 2 measured no faster (``scripts/bench_http.py --download``); a high-latency link,
        where one TCP stream's window caps the rate, is what it is for.
    ``timeout``: seconds for connecting and for each socket read.
    ``retries``: failed attempts retried per request before giving up.
    ``deadline``: seconds one tensor (or merged span) may take in all, retries included.
    ``merge_bytes``: adjacent tensors are fetched together while the span stays this small.
    ``token_env``: name of an environment variable holding a bearer token (e.g. "HF_TOKEN").
    ``ssl_context``: for https:// URLs (default ``ssl.create_default_context()``: the system's
        CAs, or the file in SSL_CERT_FILE; certificate and host name verified). A server with a
        private CA: ``ssl.create_default_context(cafile="ca.pem")``. A certificate that is not
        accepted is an error at once, not retried.
    ``verify``: "always" (default; "first" means the same here) or "never".
    ``stream``: tensors larger than the read-ahead budget are read by rows (``reads_rows``),
        as DiskNoCache reads them: the engine computes a big weight's op in chunks of rows
        (RunOptions.max_weight_chunk_bytes) while the next chunk downloads (one range request
        ahead, on a thread of its own, with one more connection), so a 118 MB weight never
        sits whole in memory. The checksum covers the whole tensor, so it is checked when the
        last rows arrive; a mismatch raises WeightsRetry and the engine runs the op again
        (never an output from corrupt bytes). Off by default: chunked ops are slower than
        whole ones and a K-split MatMul sums in another order (outputs then match DiskNoCache
        bitwise, not DiskPrefetch); a model URL opened with the "nocache" provider kind gets
        ``budget_bytes=0, stream=True``, the least memory.
    """

    def __init__(self, base_url: str, budget_bytes: int = 32 * MiB, connections: int = 2,
                 timeout: float = 10.0, retries: int = 6, token_env: str | None = None, *,
                 deadline: float = 300.0, merge_bytes: int = MiB, backoff: float = 0.25,
                 max_backoff: float = 8.0, retry_after_cap: float = 30.0, verify="always",
                 seed: int | None = None, parallel: int = 1, stream: bool = False,
                 ssl_context: ssl.SSLContext | None = None):
        if not is_url(base_url):
            raise ValueError(f"Http: {base_url!r} is not an http:// or https:// URL")
        if parallel < 1:
            raise ValueError(f"Http: parallel must be >= 1, got {parallel}")
        self.parallel = int(parallel)
        self.stream = bool(stream)
        self._pool: ThreadPoolExecutor | None = None
        self._stream_pool: ThreadPoolExecutor | None = None
        self._streams: dict[str, _Stream] = {}     # tensors being read by rows, in order
        self.stream_counts = {"streams": 0, "out_of_order": 0, "checksum_reruns": 0}
        self._closed = False
        self._mappings = _Mappings()
        self.base_url = base_url
        self.url = base_url if base_url.lower().endswith(".bin") else join_url(base_url, WEIGHTS_FILE)
        self.verify = verify_mode(verify) != "never"
        self.merge_bytes = int(merge_bytes)
        self._client = _Client(connections + (1 if stream else 0), timeout, retries, deadline, backoff,
                               max_backoff, retry_after_cap, token_env, seed, ssl_context)
        self._lock = threading.Lock()
        self._stash: dict[str, np.ndarray] = {}     # merged neighbours, fetched but not yet asked for
        self._planned: set[str] = set()
        self._skip: set[str] = set()
        try:
            self.index = self._read_index()
        except BaseException:
            self._client.close()
            raise
        self._by_offset = sorted(self.index.entries.values(), key=lambda e: e.offset)
        self._rank = {e.name: i for i, e in enumerate(self._by_offset)}
        self.readahead = ReadAhead(self._fetch, budget_bytes, thread_name="onnxstream-http-readahead")

    # --- index -----------------------------------------------------------------------------

    def _read_index(self) -> WeightsIndex:
        c = self._client

        def head(n: int) -> bytes:
            # Downloads until two agree (the index has no checksum of its own).
            n = min(n, c.file_size) if c.file_size else n
            copies: list[bytes] = []
            while len(copies) < 2 + c.retries:
                buf = bytearray(n)
                self.url = c.fetch_range(self.url, 0, memoryview(buf), "weights index")
                copies.append(bytes(buf))
                if len(copies) >= 2 and copies[-1] == copies[-2]:
                    return copies[-1]
            raise WeightsError(f"{self.url}: weights index: downloads keep differing "
                               f"(corrupted in transit?)")

        # The first small range reveals the file size (Content-Range total), so later ranges
        # never reach past the end.
        probe = bytearray(ALIGN)
        self.url = c.fetch_range(self.url, 0, memoryview(probe), "weights index")
        first = head(HEAD_GUESS)
        index = WeightsIndex.parse(first, self.url, lambda n: head(n), c.file_size)
        size = c.file_size
        if size is not None:
            for e in index.entries.values():
                if e.offset + e.nbytes > size:
                    raise WeightsError(f"{self.url}: weights file is truncated: tensor {e.name!r} needs "
                                       f"bytes {e.offset}..{e.offset + e.nbytes}, the server has {size}")
        return index

    # --- fetching ----------------------------------------------------------------------------

    def _span(self, entry: TensorEntry) -> list[TensorEntry]:
        """``entry`` and the planned tensors right after it in the file, up to merge_bytes."""
        span = [entry]
        if entry.nbytes >= self.merge_bytes:
            return span
        i = self._rank[entry.name] + 1
        end = entry.offset + entry.nbytes
        while i < len(self._by_offset):
            nxt = self._by_offset[i]
            if (nxt.offset - end >= ALIGN or nxt.offset + nxt.nbytes - entry.offset > self.merge_bytes
                    or nxt.name not in self._planned or nxt.name in self._skip or nxt.name in self._stash):
                break
            span.append(nxt)
            end = nxt.offset + nxt.nbytes
            i += 1
        return span

    def _fetch(self, entry: TensorEntry) -> np.ndarray:
        with self._lock:
            arr = self._stash.pop(entry.name, None)
            if arr is not None:
                return arr
            span = self._span(entry)
        first, last = span[0].offset, span[-1].offset + span[-1].nbytes
        raw = self._mappings.empty(last - first, first)
        view = memoryview(raw)
        label = f"tensor {entry.name!r}" + (f" (with {len(span) - 1} adjacent)" if len(span) > 1 else "") + \
                f", bytes {first}..{last}"

        def check():
            if not self.verify:
                return None
            for e in span:
                bad = _mismatch(e, crc32(view[e.offset - first:e.offset - first + e.nbytes]))
                if bad is not None:
                    return bad
            return None

        if len(span) == 1:
            self._download(entry, view, label)
        elif last > first:
            self._client.fetch_range(self.url, first, view, label, check=check)
        out = None
        extra = {}
        for e in span:
            a = decode_tensor(e, view[e.offset - first:e.offset - first + e.nbytes], self.url, verify=False)
            # read-only like DiskPrefetch's mapped arrays: the engine never writes weights, and a
            # writeable one could be donated as an op's output buffer (a weight-sized activation)
            a.flags.writeable = False
            if e is entry:
                out = a
            else:
                extra[e.name] = a
        if extra:
            with self._lock:
                # bounded: stale neighbours (never asked for) beyond two spans are dropped
                while self._stash and sum(a.nbytes for a in self._stash.values()) + (last - first) > 2 * self.merge_bytes:
                    self._stash.pop(next(iter(self._stash)))
                self._stash.update(extra)
        return out

    def _download(self, entry: TensorEntry, view: memoryview, label: str) -> None:
        """One tensor's bytes into ``view``, its CRC-32 computed as they arrive. A tensor of at
        least 2 x PART_BYTES comes as up to ``parallel`` ranges at once: one on this thread,
        the others on the part pool, each retried on its own; their CRCs are combined and a
        mismatch re-fetches the whole tensor."""
        c = self._client

        def mismatch(crc: int) -> str | None:
            return _mismatch(entry, crc) if self.verify else None

        bounds = _split(len(view), self.parallel)
        if len(bounds) <= 1:
            crc = [0]
            if bounds:
                c.fetch_range(self.url, entry.offset, view, label, check=lambda: mismatch(crc[0]),
                              crc=crc if self.verify else None)
            return
        pool = self._part_pool()
        t_end = time.monotonic() + c.deadline
        attempt = 0
        while True:
            crcs = [[0] for _ in bounds]
            jobs = [pool.submit(c.fetch_range, self.url, entry.offset + a, view[a:b], label, t_end, None, crc)
                    for (a, b), crc in zip(bounds[1:], crcs[1:])]
            error = None
            try:
                a, b = bounds[0]
                c.fetch_range(self.url, entry.offset + a, view[a:b], label, t_end, None, crcs[0])
            except BaseException as e:   # the other parts still write into view: wait for them
                error = e
            for job in jobs:
                try:
                    job.result()
                except BaseException as e:
                    error = error or e
            if error is not None:
                raise error
            crc = crcs[0][0]
            for (a, b), part in zip(bounds[1:], crcs[1:]):
                crc = crc32_combine(crc, part[0], b - a)
            bad = mismatch(crc)
            if bad is None:
                return
            c._back_off(self.url, label, attempt, _Retry(bad), t_end)
            attempt += 1

    def _part_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                if self._closed:
                    raise WeightsError(f"{self.url}: the provider is closed")
                self._pool = ThreadPoolExecutor(self.parallel - 1, thread_name_prefix="onnxstream-http-part")
            return self._pool

    def fetch_text(self, url: str) -> str:
        """A small text file (graph.txt beside the weights) through this provider's
        connections, timeouts and token; fetched twice and compared like the index."""
        body = self._client.fetch_text(url, os.path.basename(urlsplit(url).path) or url)
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise WeightsError(f"{url}: not UTF-8 text ({e})") from None

    # --- WeightsProvider ---------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self.url

    @property
    def budget_bytes(self) -> int:
        return self.readahead.budget_bytes

    @property
    def stats(self) -> dict:
        """Requests sent, bytes received, failures by cause, whether Range was ignored."""
        c = self._client
        return {"requests": c.requests, "bytes_received": c.bytes_received,
                "failures": dict(c.failures), "range_ignored": c.range_ignored,
                "buffers_reused": self._mappings.reused, **self.stream_counts}

    def plan(self, order: Sequence[str]) -> None:
        unknown = [n for n in dict.fromkeys(order) if n not in self.index]
        if unknown:
            raise WeightsError(f"plan names {len(unknown)} tensor(s) not in weights file "
                               f"{self.url}: {unknown[:5]}")
        with self._lock:
            self._planned = set(order)
            self._stash.clear()
        self.readahead.plan([self.index[n] for n in order])

    def restart(self) -> None:
        with self._lock:
            self._stash.clear()
            self._streams.clear()
        self.readahead.restart()

    def get(self, name: str) -> np.ndarray:
        return self.readahead.take(self.index[name])

    def reads_rows(self, name: str) -> bool:
        """Tensors larger than the read-ahead budget are streamed by rows (``stream``)."""
        entry = self.index.entries.get(name)
        return self.stream and entry is not None and bool(entry.shape) and entry.nbytes > self.budget_bytes

    def get_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        entry = self.index[name]
        run = row_run(np.asarray(rows)) if self.reads_rows(name) else None
        if run is not None and 0 <= run[0] and run[1] <= entry.shape[0]:
            return self._stream_rows(entry, *run)
        # Anything else (Gather from a table): the whole tensor is fetched (its checksum
        # covers all of it), then indexed.
        with self._lock:
            self._skip.add(name)
        self.readahead.exclude(name)
        found, table = self.readahead.claim(name)
        if not found:
            table = self._fetch(entry)
        return np.take(table, np.asarray(rows, dtype=np.int64), axis=0)

    def finish_rows(self, name: str) -> None:
        """The op that streamed ``name`` returned: if it stopped before the last rows, the
        rest is fetched (and discarded) to complete the checksum of the rows it used."""
        with self._lock:
            st = self._streams.pop(name, None)
        if st is None or st.whole is not None or not self.verify:
            return
        entry, c = st.entry, self._client
        scratch = memoryview(self._mappings.empty(min(entry.nbytes - st.pos, 8 * PIECE)))
        crc = st.crc
        while st.pos < entry.nbytes:
            n = min(len(scratch), entry.nbytes - st.pos)
            part = [0]
            c.fetch_range(self.url, entry.offset + st.pos, scratch[:n],
                          f"tensor {entry.name!r}, bytes {st.pos}.. (checksum of the rest)", crc=part)
            crc = crc32_combine(crc, part[0], n)
            st.pos += n
        self._end_stream(st, crc)

    def release(self, name: str) -> None:
        with self._lock:
            self._streams.pop(name, None)

    def _stream_rows(self, entry: TensorEntry, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) of a streamed tensor. In-order requests continue one running CRC-32
        and take the range fetched ahead for them (the next range of the same size is
        requested at once); the request that reaches the end checks the CRC. Any other
        request fetches the whole tensor, checked, and serves rows from it until release."""
        row_bytes = entry.nbytes // entry.shape[0]
        a, b = r0 * row_bytes, r1 * row_bytes
        with self._lock:
            st = self._streams.get(entry.name)
            if st is None:
                st = self._streams[entry.name] = _Stream(entry)
                self.stream_counts["streams"] += 1
            ahead, st.ahead = st.ahead, None
        if st.whole is None and a != st.pos:
            self.stream_counts["out_of_order"] += 1
            st.whole = self._fetch(entry)
        if st.whole is not None:
            return st.whole[r0:r1]
        if ahead is not None and ahead[:2] == (a, b):
            raw, crc = ahead[2].result()     # raises the WeightsError the fetch ended with
        else:
            raw, crc = self._fetch_bytes(entry, a, b)
        del ahead
        st.pos, st.crc = b, crc32_combine(st.crc, crc, b - a) if self.verify else 0
        if b == entry.nbytes:
            with self._lock:
                self._streams.pop(entry.name, None)
            self._end_stream(st, st.crc)
        else:
            nxt = min(entry.nbytes, b + (b - a))
            st.ahead = (b, nxt, self._streamer().submit(self._fetch_bytes, entry, b, nxt))
        out = decode_rows(entry, raw, r1 - r0)
        out.flags.writeable = False
        return out

    def _fetch_bytes(self, entry: TensorEntry, a: int, b: int) -> tuple[np.ndarray, int]:
        """Bytes [a, b) of ``entry`` and their CRC-32 (0 without verify)."""
        raw = self._mappings.empty(b - a, entry.offset + a)
        crc = [0]
        self._client.fetch_range(self.url, entry.offset + a, memoryview(raw),
                                 f"tensor {entry.name!r}, bytes {a}..{b} of {entry.nbytes}",
                                 crc=crc if self.verify else None)
        return raw, crc[0]

    def _end_stream(self, st: "_Stream", crc: int) -> None:
        bad = _mismatch(st.entry, crc) if self.verify else None
        if bad is not None:
            self.stream_counts["checksum_reruns"] += 1
            self._client._note(bad)
            raise WeightsRetry(f"{self.url}: {bad} over the rows streamed to the op")

    def _streamer(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._stream_pool is None:
                if self._closed:
                    raise WeightsError(f"{self.url}: the provider is closed")
                self._stream_pool = ThreadPoolExecutor(1, thread_name_prefix="onnxstream-http-stream")
            return self._stream_pool

    def close(self) -> None:
        ra = getattr(self, "readahead", None)
        if ra is not None:
            ra.close()
        with self._lock:
            self._stash.clear()
            self._streams.clear()
            self._closed = True
            pools = [self._pool, self._stream_pool]
            self._pool = self._stream_pool = None
        self._mappings.close()
        for pool in pools:
            if pool is not None:
                # fetches in flight end at their deadline at the latest; none is waited for here
                pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Http({self.url!r}, {len(self.index)} tensors, budget {self.budget_bytes} bytes)"


def _mismatch(entry: TensorEntry, crc: int) -> str | None:
    """The retry cause when ``crc`` is not the index's CRC-32 of ``entry``, else None."""
    if crc == entry.crc32:
        return None
    return f"checksum mismatch in tensor {entry.name!r} (crc32 {crc:08x}, index says {entry.crc32:08x})"


class _Stream:
    """A tensor the engine reads by rows: bytes [0, pos) handed out, their CRC-32 ``crc``; the
    range fetched ahead ``(begin, end, future)``; or, after an out-of-order request, ``whole``."""

    __slots__ = ("entry", "pos", "crc", "ahead", "whole")

    def __init__(self, entry: TensorEntry):
        self.entry = entry
        self.pos = 0
        self.crc = 0
        self.ahead: tuple | None = None
        self.whole: np.ndarray | None = None


def _split(n: int, parallel: int) -> list[tuple[int, int]]:
    """[a, b) byte ranges covering n bytes: one, or up to ``parallel`` of about equal size (at
    least PART_BYTES - PIECE each), their boundaries on PIECE multiples."""
    if n == 0:
        return []
    k = max(1, min(parallel, n // PART_BYTES))
    if k == 1:
        return [(0, n)]
    cuts = [i * n // k // PIECE * PIECE for i in range(k)] + [n]   # parts of n/k bytes, +-PIECE
    return list(zip(cuts[:-1], cuts[1:]))


class _Mappings:
    """Allocates download buffers; reuses the mappings of big downloads the engine dropped.

    A fresh anonymous page costs the kernel a zeroing pass, as much CPU as receiving its bytes
    (perf on the UNet: clear_page 18 % of the download's cycles, the socket copy 11 %). So when
    the last array on a mapping dies, the mapping is kept (``keep`` at most) and the next
    download is received into it: one of at most its size (and at least a quarter) into the
    smallest that fits, the part past the new tensor handed back to the kernel
    (MADV_DONTNEED), so a kept mapping never holds more resident memory than the tensor now in
    it; a bigger one into the biggest kept mapping, grown in place (mremap). An idle mapping
    that none of the next MAX_IDLE_ALLOCATIONS downloads fitted is given back to the kernel, so
    memory the engine dropped is held only until a download of its size class comes soon
    after, which would have taken as much fresh memory.
    """

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._lock = threading.Lock()
        self._idle: list[list] = []
        self.reused = 0         # downloads received into a kept mapping (tests, benchmarks)
        self.closed = False

    def empty(self, n: int, phase: int = 0) -> np.ndarray:
        """``n`` uninitialised bytes at an address congruent to ``phase`` modulo the page size (the
        file offset of the bytes: each tensor then sits where it would in DiskPrefetch's mapping
        of the file, 64-byte aligned, and ends at the same place within a page, so
        native.xnn_readable makes a padded copy exactly when it would for the disk providers; a
        page-aligned start would put the end of every page-multiple weight at a page boundary,
        and make XNNPACK's 16-byte over-read need a copy of the whole weight). At least ALIGN
        readable bytes follow the end.

        From MMAP_MIN_BYTES up, a private anonymous mapping of its own (tensors are allocated on
        the read-ahead thread and freed on the engine's, and glibc would keep such freed blocks
        in the thread's arena), reused as the class says; smaller ones from numpy."""
        phase %= PAGE
        if n < MMAP_MIN_BYTES:
            buf = np.empty(n + PAGE + ALIGN, dtype=np.uint8)
            skip = (phase - buf.ctypes.data) % PAGE
            return buf[skip:skip + n]
        size = phase + n + ALIGN
        mm = self._take(size)
        if mm is None:
            mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            if hasattr(mm, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
                # 2 MiB pages where the kernel allows: 4 KiB page faults on 3.4 GB per run cost
                # more than the download itself (measured: 1.5 vs 7-12 GB/s for fresh memory)
                mm.madvise(mmap.MADV_HUGEPAGE)
        whole = np.frombuffer(mm, dtype=np.uint8)
        # called when the last view of ``whole`` dies (the engine dropped the tensor)
        weakref.finalize(whole, self._give, mm).atexit = False
        return whole[phase:phase + n]

    def _take(self, size: int) -> mmap.mmap | None:
        with self._lock:
            for item in self._idle:
                item[1] += 1
            # an idle mapping no download has fitted for a while goes back to the kernel
            self._idle = [item for item in self._idle if item[1] <= MAX_IDLE_ALLOCATIONS]
            fits = [item for item in self._idle if size <= len(item[0]) <= 4 * size]
            smaller = [item for item in self._idle if len(item[0]) < size]
            if fits:
                item = min(fits, key=lambda it: len(it[0]))
            elif smaller:
                item = max(smaller, key=lambda it: len(it[0]))
            else:
                return None
            self._idle.remove(item)
        mm = item[0]
        used = -(-size // PAGE) * PAGE
        try:
            if len(mm) < size:
                mm.resize(size)      # mremap: the pages it has stay, only the rest is fresh
            elif len(mm) > used and hasattr(mm, "madvise"):
                mm.madvise(mmap.MADV_DONTNEED, used, len(mm) - used)
        except (BufferError, OSError, ValueError, SystemError):
            return None              # still exported (its last array is being freed), or no mremap
        with self._lock:
            self.reused += 1
        return mm

    def _give(self, mm: mmap.mmap) -> None:
        with self._lock:
            if self.closed or self.keep == 0:
                return
            self._idle.append([mm, 0])     # [mapping, allocations since it became idle]
            del self._idle[:-self.keep]

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._idle.clear()
