"""A fault-injecting HTTP/1.1 TCP proxy for the HTTP provider's tests (threads, stdlib only).

``FaultProxy(upstream_port, seed=..., rate=...)`` listens on 127.0.0.1 and forwards each
request to the upstream server (nginx) on a fresh connection, keeping the client's
connection alive. On a seeded schedule it injects one fault per chosen request, cycling
through ``kinds`` so every kind occurs:

    drop      forward the headers and part of the body, then reset the connection
    503       answer 503 Service Unavailable (upstream not asked)
    429       answer 429 Too Many Requests with ``Retry-After: <retry_after>``
    stall     forward part of the body, then go silent for ``stall_seconds`` (past the
              client's read timeout), then close
    truncate  a well-formed response with a shorter body (Content-Length rewritten), the
              connection kept alive: the client must notice the missing bytes
    flip      forward everything with one byte of the body inverted

``strip_range=True`` removes the Range header from every request, so the upstream answers
200 with the whole file (a server that ignores Range). ``log`` lists (request number, path,
fault or None) for the tests' assertions.
"""
from __future__ import annotations

import random
import socket
import struct
import threading
import time

KINDS = ("drop", "503", "429", "stall", "truncate", "flip")


class FaultProxy:
    def __init__(self, upstream_port: int, *, seed: int = 0, rate: float = 0.0, kinds=KINDS,
                 strip_range: bool = False, retry_after: str = "0", stall_seconds: float = 1.5,
                 upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.rate = rate
        self.kinds = tuple(kinds)
        self.strip_range = strip_range
        self.retry_after = retry_after
        self.stall_seconds = stall_seconds
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._faults = 0
        self.log: list[tuple[int, str, str | None]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._closed = False
        self._clients: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="fault-proxy")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def faults(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, _, f in self.log:
            if f:
                out[f] = out.get(f, 0) + 1
        return out

    def close(self) -> None:
        self._closed = True
        try:
            self._sock.close()
        except OSError:
            pass
        with self._lock:
            for c in list(self._clients):
                try:
                    c.close()
                except OSError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- internals -------------------------------------------------------------------------

    def _choose(self, path: str) -> str | None:
        with self._lock:
            n = len(self.log)
            fault = None
            if self.rate and self._rng.random() < self.rate:
                fault = self.kinds[self._faults % len(self.kinds)]
                self._faults += 1
            self.log.append((n, path, fault))
            return fault

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._clients.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        buf = b""
        try:
            while not self._closed:
                while b"\r\n\r\n" not in buf:
                    data = client.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "?"
                headers = [ln for ln in lines[1:] if ln and not ln.lower().startswith("connection:")]
                if self.strip_range:
                    headers = [ln for ln in headers if not ln.lower().startswith("range:")]
                fault = self._choose(path)
                if fault == "503":
                    client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\nbusy\n")
                    continue
                if fault == "429":
                    client.sendall(f"HTTP/1.1 429 Too Many Requests\r\nRetry-After: {self.retry_after}\r\n"
                                   f"Content-Length: 5\r\n\r\nslow\n".encode())
                    continue
                request = "\r\n".join([lines[0]] + headers + ["Connection: close", "", ""]).encode()
                if not self._forward(client, request, fault):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._clients.discard(client)
            try:
                client.close()
            except OSError:
                pass

    def _forward(self, client: socket.socket, request: bytes, fault: str | None) -> bool:
        """One request through the upstream; False when the client connection is done."""
        up = socket.create_connection(self.upstream, timeout=30)
        try:
            up.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = up.recv(65536)
                if not chunk:
                    return False
                data += chunk
            head, _, body_start = data.partition(b"\r\n\r\n")
            hlines = head.decode("latin-1").split("\r\n")
            length = None
            kept = [hlines[0]]
            for ln in hlines[1:]:
                low = ln.lower()
                if low.startswith("connection:") or low.startswith("keep-alive:"):
                    continue
                if low.startswith("content-length:"):
                    length = int(ln.split(":", 1)[1])
                    continue
                kept.append(ln)
            if length is None:        # not expected from nginx for static files: pass through, close
                client.sendall(head + b"\r\n\r\n" + body_start)
                while True:
                    chunk = up.recv(1 << 20)
                    if not chunk:
                        return False
                    client.sendall(chunk)
            send_len = length
            if fault == "truncate" and length > 1:
                send_len = length // 2
            kept.append(f"Content-Length: {send_len}")
            client.sendall(("\r\n".join(kept) + "\r\n\r\n").encode("latin-1"))
            cut = length // 3 if fault in ("drop", "stall") else None
            flip_at = self._rng_flip(length) if fault == "flip" else None
            sent = 0
            pending = body_start
            while sent < send_len:
                if not pending:
                    pending = up.recv(1 << 20)
                    if not pending:
                        return False
                piece = pending[:send_len - sent]
                pending = pending[len(piece):]
                if cut is not None and sent + len(piece) >= cut:
                    piece = piece[:cut - sent]
                    client.sendall(piece)
                    if fault == "stall":
                        time.sleep(self.stall_seconds)
                        return False
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return False                       # close with RST
                if flip_at is not None and sent <= flip_at < sent + len(piece):
                    b = bytearray(piece)
                    b[flip_at - sent] ^= 0xFF
                    piece = bytes(b)
                client.sendall(piece)
                sent += len(piece)
            return True
        finally:
            up.close()

    def _rng_flip(self, length: int) -> int | None:
        if length <= 0:
            return None
        with self._lock:
            return self._rng.randrange(length)


class Blackhole:
    """Accepts TCP connections and never answers (a hung server)."""

    def __init__(self):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._closed:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(c)

    def close(self):
        self._closed = True
        self._sock.close()
        for c in self._conns:
            c.close()
