"""Where a dataset is read from: a local directory, `megaspeech:REL` (inside the package),
`s3://bucket/prefix`, `http(s)://host/prefix` (or any other fsspec URL whose backend is installed),
or `pipe:COMMAND` (webdataset's convention: COMMAND writes one file to stdout, `{}` in it is
replaced by the file's name, e.g. `pipe:aws s3 cp s3://bucket/prefix/{} -`).

Remote reads go through fsspec (s3fs for S3, aiohttp for HTTP): the client stack that Hugging Face
datasets and torch's checkpoint storage already use, so credentials and endpoints come from the
usual places (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE / AWS_ENDPOINT_URL, ~/.aws,
or `data.storage_options`, passed to the fsspec filesystem as keyword arguments).

A shard is read as a sequence of ranged reads (HTTP Range / S3 ranged GET) of `IOSettings.chunk`
bytes (data.io_chunk_mb; a local file in CHUNK reads), each with a timeout (`IOSettings.timeout_s`).
A transient failure (connection refused or reset, 5xx, timeout, truncated body) is retried
`retries` times with exponential backoff from `backoff_s`, resuming at the byte offset already read;
what is not transient (not found, access denied, no credentials) or still failing after the retries
is a ShardError naming the URL, the byte offset and the fix. `ShardStream` runs these reads in a
background thread that keeps up to `read_ahead` bytes ready (bounded memory), hashes the bytes as
they stream and checks size and sha256 against the manifest at the end: a difference means the
shard changed under the run.
"""
from __future__ import annotations

import collections
import hashlib
import os
import subprocess
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from megaspeech.config.data import DataConfig, is_remote
from megaspeech.data.shard_format import ShardError
from megaspeech.fs import resolve_path

CHUNK = 4 << 20  # bytes per read of a local file


@dataclass
class IOSettings:
    timeout_s: float = 60.0
    retries: int = 5
    backoff_s: float = 0.5
    storage_options: dict = field(default_factory=dict)
    chunk: int = 16 << 20  # bytes per remote ranged read: each request costs latency and server time


def io_settings(cfg: DataConfig) -> IOSettings:
    """The data.io_* settings and data.storage_options of a DataConfig."""
    return IOSettings(cfg.io_timeout_s, cfg.io_retries, cfg.io_backoff_s, dict(cfg.storage_options),
                      max(1, int(cfg.io_chunk_mb * (1 << 20))))


class _Transient(Exception):
    """A failure worth retrying (network, 5xx, timeout, truncated body)."""


def _is_transient(e: BaseException) -> bool:
    import asyncio
    if isinstance(e, (_Transient, ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return True
    names = {c.__name__ for c in type(e).__mro__}
    if names & {"ClientPayloadError", "ClientConnectionError", "ServerDisconnectedError", "FSTimeoutError",
                "IncompleteRead", "HTTPClientError", "EndpointConnectionError", "ConnectTimeoutError",
                "ReadTimeoutError", "ResponseStreamingError"}:
        return True
    status = getattr(e, "status", None)  # aiohttp ClientResponseError
    if isinstance(status, int) and status >= 500:
        return True
    cause = e.__cause__ or e.__context__
    meta = getattr(cause, "response", None) or getattr(e, "response", None)
    code = (meta or {}).get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(meta, dict) else None
    if isinstance(code, int) and code >= 500:
        return True
    text = str(e)
    return any(s in text for s in ("Service Unavailable", "Internal Server Error", "Bad Gateway", "SlowDown",
                                   "InternalError", "ServiceUnavailable", "(500)", "(502)", "(503)", "(504)"))


_FS_CACHE: dict = {}
_FS_LOCK = threading.Lock()


def _new_fs(proto: str, io: IOSettings):
    """An fsspec filesystem for `proto` with our timeouts; the retries are ours (counted, backed off, logged)."""
    import fsspec
    opts = dict(io.storage_options)
    if proto in ("s3", "s3a"):
        t = io.timeout_s
        cfg = {"connect_timeout": t, "read_timeout": t, "retries": {"total_max_attempts": 1},
               **opts.pop("config_kwargs", {})}
        endpoint = opts.pop("endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL")
        fs = fsspec.filesystem(proto, config_kwargs=cfg, endpoint_url=endpoint, skip_instance_cache=True, **opts)
        fs.retries = 1
        return fs
    if proto in ("http", "https"):
        import aiohttp
        ck = {"timeout": aiohttp.ClientTimeout(total=io.timeout_s), **opts.pop("client_kwargs", {})}
        return fsspec.filesystem(proto, client_kwargs=ck, skip_instance_cache=True, **opts)
    return fsspec.filesystem(proto, skip_instance_cache=True, **opts)


def _fatal(url: str, e: BaseException, offset: int) -> ShardError:
    """A ShardError for a failure that retrying does not fix, naming what to do."""
    names = {c.__name__ for c in type(e).__mro__}
    at = f" at byte {offset}" if offset else ""
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        return ShardError(f"{url}: no S3 credentials found ({e}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                          f"(or AWS_PROFILE / ~/.aws/credentials), or data.storage_options "
                          f"{{anon: true}} for a public bucket")
    if isinstance(e, PermissionError) or getattr(e, "status", None) in (401, 403) or "Forbidden" in str(e) \
            or "AccessDenied" in str(e) or "InvalidAccessKeyId" in str(e) or "SignatureDoesNotMatch" in str(e):
        return ShardError(f"{url}: access denied{at} ({e}): the credentials were refused or lack read permission; "
                          f"check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE (or data.storage_options "
                          f"key/secret/endpoint_url) and the bucket policy")
    if isinstance(e, FileNotFoundError) or getattr(e, "status", None) == 404:
        return ShardError(f"{url}: not found (was the dataset moved or partly deleted? check data.root / the source "
                          f"path, or re-run the prep tool)")
    return ShardError(f"{url}: read failed{at} ({type(e).__name__}: {e})")


class Location:
    """A dataset directory wherever it lives. `url(name)` names a member for messages;
    `read(name, start, end)` is one ranged read (end exclusive, None = to the end), with retries."""

    def __init__(self, spec: str | Path, io: IOSettings | None = None):
        self.io = io or IOSettings()
        spec = str(spec)
        self.kind = "pipe" if spec.startswith("pipe:") else "url" if is_remote(spec) else "local"
        self.spec = spec.rstrip("/") if self.kind == "url" else spec
        self.path = resolve_path(spec) if self.kind == "local" else None
        if self.kind == "pipe" and "{}" not in spec:
            raise ShardError(f"{spec}: a pipe: dataset needs `{{}}` where the file name goes, e.g. "
                             f"pipe:aws s3 cp s3://bucket/prefix/{{}} -")
        self._fs, self._pid = None, None

    def __str__(self) -> str:
        return str(self.path) if self.kind == "local" else self.spec

    def url(self, name: str) -> str:
        if self.kind == "local":
            return str(self.path / name)
        return self.spec.replace("{}", name) if self.kind == "pipe" else f"{self.spec}/{name}"

    def fs(self):
        """The fsspec filesystem: one per process and settings, shared by every Location of a run (a
        client costs ~0.3 s of CPU to build); a forked DataLoader worker makes its own."""
        if self._fs is None or self._pid != os.getpid():
            proto = self.spec.split("://", 1)[0]
            aws_env = sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))
            key = (os.getpid(), proto, self.io.timeout_s, repr(sorted(self.io.storage_options.items())), repr(aws_env))
            with _FS_LOCK:
                if key not in _FS_CACHE:
                    _FS_CACHE[key] = _new_fs(proto, self.io)
                self._fs = _FS_CACHE[key]
            self._pid = os.getpid()
        return self._fs

    def _read_once(self, name: str, start: int, end: int | None) -> bytes:
        if self.kind == "local":
            with open(self.path / name, "rb") as f:
                f.seek(start)
                return f.read() if end is None else f.read(end - start)
        if self.kind == "pipe":
            return _pipe_read(self.url(name), start, end, self.io.timeout_s)
        path = self.url(name)
        try:
            if start == 0 and end is None:
                return self.fs().cat_file(path, timeout=self.io.timeout_s)
            return self.fs().cat_file(path, start=start, end=end, timeout=self.io.timeout_s)
        except Exception as e:  # a range past the end (HTTP 416, S3 InvalidRange): the file ends before it
            if getattr(e, "status", None) == 416 or "InvalidRange" in str(e) or "416" in str(e)[:40]:
                return b""
            raise

    def read(self, name: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of `name` (a short result means the file ends there)."""
        if self.kind == "local":
            try:
                return self._read_once(name, start, end)
            except FileNotFoundError:
                raise ShardError(f"{self.url(name)}: missing (was the dataset moved or partly deleted? "
                                 f"re-run the prep tool)") from None
        return retrying(lambda: self._read_once(name, start, end), self.url(name), start, self.io)

    def exists(self, name: str) -> bool:
        if self.kind == "local":
            return (self.path / name).is_file()
        try:
            self.read(name, 0, 1)
            return True
        except ShardError as e:
            if "not found" in str(e):
                return False
            raise

    def sizes(self) -> dict[str, int] | None:
        """Size of every file in the directory from one listing, or None where nothing lists
        (HTTP without an index, pipe:): shards are then checked when they are opened."""
        if self.kind == "local":
            return {p.name: p.stat().st_size for p in self.path.iterdir() if p.is_file()}
        if self.kind == "pipe" or self.spec.startswith(("http://", "https://")):
            return None
        entries = retrying(lambda: self.fs().ls(self.spec, detail=True, refresh=True), self.spec, 0, self.io)
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: e.get("size") for e in entries if e.get("type") == "file"}


def retrying(fn, url: str, offset: int, io: IOSettings):
    """fn() with `io.retries` retries of transient failures, exponential backoff; else a ShardError."""
    t0 = time.monotonic()
    for attempt in range(io.retries + 1):
        try:
            return fn()
        except ShardError:
            raise
        except Exception as e:  # noqa: BLE001  (classified below: transient or a named fatal error)
            if not _is_transient(e):
                raise _fatal(url, e, offset) from None
            if attempt == io.retries:
                raise ShardError(
                    f"{url}: read failed at byte {offset} after {attempt + 1} tries in {time.monotonic() - t0:.1f} s "
                    f"({type(e).__name__}: {e}); the server or network kept failing: check it, or raise "
                    f"data.io_retries / data.io_timeout_s / data.io_backoff_s") from None
            time.sleep(io.backoff_s * 2 ** attempt)


def _pipe_read(cmd_line: str, start: int, end: int | None, timeout: float) -> bytes:
    """Run a pipe: command (a shell line), skip `start` bytes, return up to end - start."""
    cmd = cmd_line.split(":", 1)[1]
    try:
        out = subprocess.run(cmd, shell=True, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise _Transient(f"`{cmd}` ran past {timeout} s") from e
    if out.returncode != 0:
        raise _Transient(f"`{cmd}` exited {out.returncode}: {out.stderr.decode(errors='replace')[-300:]}")
    return out.stdout[start:] if end is None else out.stdout[start:end]


class ShardStream:
    """File-like reader of one shard, fed by a background thread with up to `read_ahead` bytes
    buffered. Checks at the end: byte count == `size` and (when given) sha256 == `sha256`.
    verify_first (local files): hash the whole file before the first byte is handed out, so a
    corrupt local shard yields no sample, as a whole-shard read did; remote shards are hashed as
    they stream (no second download) and a mismatch is raised at the shard's end."""

    def __init__(self, loc: Location, name: str, size: int | None, sha256: str | None, *,
                 read_ahead: int = 16 << 20, verify_first: bool = False):
        self.url = loc.url(name)
        self._pump = _Pump(loc, name, size, sha256, read_ahead, verify_first and sha256 is not None)
        self._buf, self._pos = b"", 0
        self.offset = 0  # bytes handed out so far
        self.chunk = self._pump.chunk  # bytes per read from the source: read(n >= chunk) returns one uncopied
        weakref.finalize(self, self._pump.close)  # an abandoned stream stops its thread
        threading.Thread(target=self._pump.run, name=f"megaspeech-shard {name}", daemon=True).start()

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._buf) and n >= self.chunk:  # whole chunks as they came: no copy
            chunk = self._pump.get() or b""
            if len(chunk) <= n:
                self.offset += len(chunk)
                return chunk
            self._buf, self._pos = chunk, 0
        out = []
        want = n if n >= 0 else 1 << 62
        while want > 0:
            if self._pos >= len(self._buf):
                chunk = self._pump.get()
                if chunk is None:
                    break
                self._buf, self._pos = chunk, 0
            piece = self._buf[self._pos:self._pos + want]
            self._pos += len(piece)
            want -= len(piece)
            out.append(piece)
        data = out[0] if len(out) == 1 else b"".join(out)
        self.offset += len(data)
        return data

    def close(self) -> None:
        self._pump.close()


class _Pump:
    """The reading thread's side of a ShardStream (holds no reference to the stream itself)."""

    def __init__(self, loc, name, size, sha256, read_ahead, verify_first):
        self.loc, self.name, self.size, self.sha256 = loc, name, size, sha256
        self.read_ahead, self.verify_first = max(read_ahead, 1), verify_first
        self.chunk = CHUNK if loc.kind == "local" else loc.io.chunk
        self.q: collections.deque = collections.deque()
        self.held = 0
        self.cv = threading.Condition()
        self.closed = self.done = False
        self.error: BaseException | None = None

    def _chunks(self):
        """The file's bytes in self.chunk pieces (ranged reads with retries), then the size check."""
        off, url = 0, self.loc.url(self.name)
        while not self.closed and (self.size is None or off < self.size):
            end = off + self.chunk if self.size is None else min(off + self.chunk, self.size)
            data = self.loc.read(self.name, off, end)
            off += len(data)
            if data:
                yield data
            if len(data) < end - (off - len(data)):  # the file ends here
                break
        if self.size is not None and off != self.size and not self.closed:
            raise ShardError(f"{url}: {off} bytes but the manifest says {self.size} (truncated? the shard changed "
                             f"under the run); re-create the shard or restore it")

    def _check(self, h) -> None:
        if self.sha256 is not None and h.hexdigest() != self.sha256:
            raise ShardError(f"{self.loc.url(self.name)}: sha256 does not match the manifest (corrupt, or the shard "
                             f"changed under the run); re-create the shard or restore it")

    def run(self) -> None:
        try:
            if self.verify_first:
                h = hashlib.sha256()
                for c in self._chunks():
                    h.update(c)
                self._check(h)
            h = hashlib.sha256() if self.sha256 is not None and not self.verify_first else None
            for c in self._chunks():
                if h is not None:
                    h.update(c)
                with self.cv:
                    while self.held >= self.read_ahead and not self.closed:
                        self.cv.wait(0.5)
                    if self.closed:
                        return
                    self.q.append(c)
                    self.held += len(c)
                    self.cv.notify_all()
            if h is not None and not self.closed:
                self._check(h)
        except BaseException as e:  # handed to the reader, raised there
            self.error = e
        with self.cv:
            self.done = True
            self.cv.notify_all()

    def get(self) -> bytes | None:
        """The next chunk; None at the end; the thread's error, raised here."""
        with self.cv:
            while not self.q and not self.done:
                self.cv.wait(1.0)
            if self.q:
                c = self.q.popleft()
                self.held -= len(c)
                self.cv.notify_all()
                return c
            if self.error is not None:
                raise self.error
            return None

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.q.clear()
            self.held = 0
            self.cv.notify_all()
