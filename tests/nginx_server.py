"""Start and stop a private nginx serving a directory on 127.0.0.1 (tests and scripts/bench_http.py).

Runs as the current user with a generated configuration in ``work`` (no daemon, no master
process, pid/log/temp paths in ``work``, a free port); nothing outside ``work`` is written.
Needs Debian's ``nginx`` package (``bash scripts/setup.sh --test`` installs it).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tls_files(work) -> dict[str, str]:
    """A throwaway CA and a certificate it signed for 127.0.0.1 and localhost, made with the
    openssl command in ``work``: paths {"ca", "cert", "key"} (PEM)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is not installed (bash scripts/setup.sh --test)")
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    f = {k: str(work / f"{k}.pem") for k in ("ca", "ca_key", "cert", "key", "csr")}
    ext = work / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")

    def run(*args):
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=onnxstream test CA",
        "-keyout", f["ca_key"], "-out", f["ca"])
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", f["key"], "-out", f["csr"])
    run("x509", "-req", "-in", f["csr"], "-CA", f["ca"], "-CAkey", f["ca_key"], "-CAcreateserial",
        "-days", "2", "-extfile", str(ext), "-out", f["cert"])
    return {k: f[k] for k in ("ca", "cert", "key")}


def start_nginx(root, work, tls: dict | None = None, port: int | None = None, extra: str = "",
                access_log: str | None = None) -> tuple[subprocess.Popen, int]:
    """nginx serving ``root`` (static files, Range honoured, sendfile) on a free port: (process, port).
    ``tls`` (make_tls_files' paths): HTTPS with that certificate instead of plain HTTP.
    ``port``: this one instead of a free one. ``extra``: more configuration inside ``http {}``
    (another server block). ``access_log``: a file getting one line per request:
    ``<server port> "<request line>" "<Authorization header or ->"``."""
    if NGINX is None:
        raise RuntimeError("nginx is not installed (bash scripts/setup.sh --test)")
    root, work = Path(root).resolve(), Path(work).resolve()
    port = free_port() if port is None else port
    log = (f'log_format seen \'$server_port "$request" "$http_authorization"\'; access_log {access_log} seen;'
           if access_log else "access_log off;")
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / d).mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    {log}
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    types {{ application/octet-stream bin; text/plain txt; application/json json; }}
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port}{" ssl" if tls else ""};
        {f"ssl_certificate {tls['cert']}; ssl_certificate_key {tls['key']};" if tls else ""}
        root {root};
    }}
    {extra}
}}
""")
    proc = subprocess.Popen([NGINX, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t_end = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}: "
                               f"{proc.stderr.read().decode(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if time.monotonic() > t_end:
                stop_nginx(proc)
                raise RuntimeError("nginx did not start listening") from None
            time.sleep(0.05)


def stop_nginx(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
