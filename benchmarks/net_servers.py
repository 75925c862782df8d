"""Local network servers for remote-shard tests and benchmarks/data_throughput.py: nginx (HTTP),
moto's standalone S3 server, and a delaying / faulting HTTP proxy in front of either.

It lives in benchmarks/ (not tests/) because the benchmark needs it and benchmarks may not import
tests/; tests/helpers/servers.py re-exports it with pytest fixtures. No megaspeech import: it is
test infrastructure, not library code.

    nginx_server(root_dir) -> base_url          static files with Range support, as the current user
    s3_server() -> (endpoint_url, storage_options)  moto with IAM auth on, one bucket, one access key
    upload_dir(local_dir, "s3://bucket/prefix", storage_options)
    FaultProxy(upstream_url, delay_s=0.02)      .url; .storm(n, status) .truncate(n, after_bytes)
                                                .stop() / .start() on the same port
    python benchmarks/net_servers.py proxy --upstream URL --port P --delay-ms 20   (as a process)

Servers that cannot start (nginx or moto missing) raise RuntimeError naming what to install:
a missing tool fails the test, never skips it.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BUCKET = "megaspeech-test"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None, what: str, log: Path | None = None,
              timeout: float = 30.0) -> None:
    """Until 127.0.0.1:port accepts a connection; RuntimeError with the log if the process exits."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            text = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {port}:\n{text}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ autoindex on; autoindex_format json; }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_server(root_dir, port: int | None = None):
    """Serve `root_dir` over HTTP on 127.0.0.1 (Debian's nginx-light, `daemon off`, config, pid,
    logs and temp paths in a temp dir). Yields the base URL, e.g. http://127.0.0.1:41234."""
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if exe is None:
        raise RuntimeError("nginx is not installed: apt-get install nginx-light (listed in .ci/apt-packages.txt)")
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="nginx-") as tmp:
        # as root nginx would drop its workers to `nobody`, who cannot read a 0700 pytest tmp dir
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, tmp=tmp, port=port, root=Path(root_dir).resolve()))
        log = Path(tmp) / "stderr.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen([exe, "-p", tmp, "-e", f"{tmp}/error.log", "-c", str(conf)],
                                    stdout=err, stderr=subprocess.STDOUT)
        try:
            wait_port(port, proc, "nginx", log)
            yield f"http://127.0.0.1:{port}"
        finally:
            _stop(proc)


def _moto_env(port: int, no_auth_actions: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # IAM auth on after the first `no_auth_actions` requests (the user, key, policy set-up), so that
    # a wrong key is refused as by real S3 (moto accepts any key otherwise)
    env.update(INITIAL_NO_AUTH_ACTION_COUNT=str(no_auth_actions), MOTO_PORT=str(port))
    return env


def _moto_setup(endpoint: str) -> dict:
    """Create an IAM user with an allow-all policy, its access key and the test bucket."""
    import boto3
    anon = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id="setup", aws_secret_access_key="setup")
    iam = boto3.client("iam", **anon)
    iam.create_user(UserName="megaspeech")
    iam.put_user_policy(UserName="megaspeech", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="megaspeech")["AccessKey"]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=key["AccessKeyId"],
                      aws_secret_access_key=key["SecretAccessKey"])
    s3.create_bucket(Bucket=BUCKET)
    return {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"], "endpoint_url": endpoint,
            "client_kwargs": {"region_name": REGION}}


@contextlib.contextmanager
def s3_server(port: int | None = None):
    """moto's standalone S3 server on 127.0.0.1 with IAM auth on and one bucket (BUCKET).
    Yields (endpoint_url, storage_options) where storage_options are s3fs keyword arguments
    (key, secret, endpoint_url, client_kwargs)."""
    try:
        import moto.server  # noqa: F401  (only to name the fix; the server runs in its own process)
    except ImportError as e:
        raise RuntimeError(f"moto is not installed ({e}): pip install 'moto[server]' (the dev extra)") from e
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="moto-") as tmp:
        log = Path(tmp) / "moto.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                    stdout=out, stderr=subprocess.STDOUT, env=_moto_env(port, 3))
        try:
            wait_port(port, proc, "moto.server", log, timeout=60)
            yield endpoint, _moto_setup(endpoint)
        finally:
            _stop(proc)


def upload_dir(local_dir, url: str, storage_options: dict) -> None:
    """Copy every file under `local_dir` to s3://bucket/prefix/<relative path>."""
    import s3fs
    fs = s3fs.S3FileSystem(**storage_options)
    local_dir = Path(local_dir)
    for p in sorted(local_dir.rglob("*")):
        if p.is_file():
            fs.put_file(str(p), f"{url.rstrip('/')}/{p.relative_to(local_dir).as_posix()}")


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_ProxyServer"

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.open.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.open.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _forward(self) -> None:
        proxy = self.server.proxy
        if proxy.delay_s:
            time.sleep(proxy.delay_s)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = proxy.take_fault()
        if fault and fault[0] == "status":
            msg = b"injected fault"
            self.send_response(fault[1])
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        up = urllib.parse.urlsplit(proxy.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
        conn.request(self.command, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "date", "server"):
                self.send_header(k, v)
        length = resp.getheader("Content-Length")
        if length is None and self.command != "HEAD":
            data = resp.read()
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()
            return
        self.end_headers()
        limit = fault[1] if fault and fault[0] == "truncate" else None
        sent = 0
        while self.command != "HEAD":
            chunk = resp.read(1 << 16)
            if not chunk:
                break
            if limit is not None and sent + len(chunk) > limit:
                self.wfile.write(chunk[: limit - sent])
                self.wfile.flush()
                self.close_connection = True  # cut the body short: the client sees a truncated response
                conn.close()
                return
            self.wfile.write(chunk)
            sent += len(chunk)
        conn.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: "FaultProxy"

    def __init__(self, *args):
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        super().__init__(*args)

    def handle_error(self, request, client_address) -> None:  # a client or stop() cut the line: quiet
        pass


class FaultProxy:
    """HTTP proxy to `upstream_url` on 127.0.0.1 adding `delay_s` per request. Faults, each for the
    next `n` requests: storm(n, status) answers `status` without forwarding; truncate(n, after)
    sends the upstream headers (full Content-Length) then closes after `after` body bytes.
    stop() closes the listening socket and every open connection; start() listens again on the
    same port. `requests` counts the requests served."""

    def __init__(self, upstream_url: str, delay_s: float = 0.0, port: int | None = None):
        self.upstream = upstream_url.rstrip("/")
        self.delay_s = delay_s
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests = 0
        self._faults: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._server: _ProxyServer | None = None
        self.start()

    def take_fault(self) -> tuple[str, int] | None:
        with self._lock:
            self.requests += 1
            return self._faults.pop(0) if self._faults else None

    def storm(self, n: int, status: int = 503) -> None:
        with self._lock:
            self._faults += [("status", status)] * n

    def truncate(self, n: int, after_bytes: int) -> None:
        with self._lock:
            self._faults += [("truncate", after_bytes)] * n

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def start(self) -> None:
        self._server = _ProxyServer(("127.0.0.1", self.port), _ProxyHandler)
        self._server.proxy = self
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with self._server.lock:  # cut the keep-alive connections too, as a dying server does
                for sock in self._server.open:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            self._server = None

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def proxy_process(upstream_url: str, delay_ms: float, cpus: set[int] | None = None):
    """A FaultProxy in its own process (so that it does not share the GIL or the core of the
    loader being measured). Yields its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "proxy", "--upstream", upstream_url, "--port", str(port),
                             "--delay-ms", str(delay_ms)])
    try:
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(proc.pid, cpus)
        wait_port(port, proc, "proxy")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def main() -> None:
    p = argparse.ArgumentParser(description="run a delaying HTTP proxy (FaultProxy) until killed")
    p.add_argument("cmd", choices=["proxy"])
    p.add_argument("--upstream", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay-ms", type=float, default=20.0)
    a = p.parse_args()
    FaultProxy(a.upstream, a.delay_ms / 1000, a.port)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
