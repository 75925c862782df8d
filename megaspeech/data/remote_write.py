"""Where a dataset is written: a local directory or any fsspec URL (s3://bucket/prefix, gs://, ...).

`ShardWriter`, `part_done` and `merge_parts` go through `output_dir(path)`, so every data tool writes
to object storage with no code of its own. Locally a shard is a hidden temp file renamed over its name.
At a URL a shard is written to a local staging temp file, uploaded as one object (an S3 PUT is
atomic: the object appears whole or not at all), and its size checked against the staged file before
the writer goes on; the manifest is uploaded last, after every shard it names, so a dataset (or a
part, for the job-array resume rule) that has a manifest is complete. A writer killed before close
leaves shards without a manifest: never a dataset that looks complete (its local staging dir is
removed by the next writer on the host). Credentials and endpoint come from the backend's usual
places, as for reading (megaspeech.data.remote): for S3 AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_PROFILE / AWS_ENDPOINT_URL or ~/.aws; transient errors are retried and every request timed out by
s3fs / botocore themselves (an upload is a whole-object PUT, safe to repeat). Any failure is a
ShardError naming the URL.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

from megaspeech.data.shard_format import ShardError, parse_manifest
from megaspeech.fs import is_url, pid_alive, write_atomic

class LocalDir:
    """A dataset directory on a local (or shared POSIX) filesystem."""

    remote = False

    def __init__(self, path: str | Path):
        self.path = self.location = Path(path)
        self.staging = self.path  # shard temp files live beside their final names

    def where(self, name: str) -> str:
        return str(self.path / name)

    def mkdir(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def publish(self, tmp: Path, name: str, size: int) -> None:
        """Move the finished staged file `tmp` (fsynced, `size` bytes) to `name`."""
        os.replace(tmp, self.path / name)

    def write_text(self, name: str, text: str) -> None:
        write_atomic(self.path / name, text)

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)

    def read_manifest(self, name: str) -> dict | None:
        p = self.path / name
        return parse_manifest(p.read_text(), str(p)) if p.is_file() else None

    def size(self, name: str) -> int | None:
        """Bytes of file `name`, None if there is none."""
        p = self.path / name
        return p.stat().st_size if p.is_file() else None

    def close(self) -> None:
        pass


class RemoteDir:
    """A dataset "directory" at an fsspec URL: staged locally, uploaded object by object, sizes verified."""

    remote = True

    def __init__(self, url: str):
        import fsspec
        self.url = self.location = url.rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as e:
            raise ShardError(f"{url}: cannot write there ({e}); s3:// needs s3fs (a megaspeech dependency: "
                             f"pip install -e .), other schemes their fsspec backend") from None
        self._staging: Path | None = None
        self._sizes: dict[str, int] | None = None

    @property
    def staging(self) -> Path:
        """A local temp dir under $TMPDIR for the shard being written, removed by close(); created on
        first use (part_done / merge_parts need none). Those of killed writers on this host are removed."""
        if self._staging is None:
            prefix = f"megaspeech-stage-{socket.gethostname()}-"
            for old in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
                pid = old.name[len(prefix):].split("-")[0]
                if pid.isdigit() and not pid_alive(int(pid)):
                    shutil.rmtree(old, ignore_errors=True)
            self._staging = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
        return self._staging

    def where(self, name: str) -> str:
        return f"{self.url}/{name}"

    def mkdir(self) -> None:
        pass  # object stores have no directories; the prefix exists once an object is under it

    def _call(self, what: str, name: str, fn, *args, missing_ok: bool = False):
        """fn(*args), any failure re-raised as a ShardError naming the URL; with missing_ok a missing
        object (FileNotFoundError) returns None."""
        try:
            return fn(*args)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise ShardError(f"{self.where(name)}: {what} failed: not found (does the bucket exist?)") from None
        except ShardError:
            raise
        except Exception as e:  # botocore / aiohttp errors carry no URL: name it and what failed
            raise ShardError(f"{self.where(name)}: {what} failed: {type(e).__name__}: {e} (check the URL, the "
                             f"credentials (AWS_* variables or ~/.aws for s3://) and the endpoint)") from e

    def _verify(self, name: str, size: int) -> None:
        path = f"{self.root}/{name}"
        self.fs.invalidate_cache(path)
        got = self._call("size check", name, lambda: self.fs.info(path)["size"])
        if got != size:
            raise ShardError(f"{self.where(name)}: {got} bytes after upload, {size} were written; the store "
                             f"did not keep the object whole: re-run the tool (finished parts are kept)")

    def publish(self, tmp: Path, name: str, size: int) -> None:
        """Upload the finished staged file, check its size at the destination, drop the local copy."""
        self._call("upload", name, self.fs.put_file, str(tmp), f"{self.root}/{name}")
        self._verify(name, size)
        tmp.unlink()

    def write_text(self, name: str, text: str) -> None:
        data = text.encode()
        self._call("upload", name, self.fs.pipe_file, f"{self.root}/{name}", data)
        self._verify(name, len(data))

    def remove(self, name: str) -> None:
        path = f"{self.root}/{name}"
        self.fs.invalidate_cache(path)
        self._call("delete", name, self.fs.rm_file, path, missing_ok=True)  # no error for a missing key

    def read_manifest(self, name: str) -> dict | None:
        path = f"{self.root}/{name}"
        self.fs.invalidate_cache(path)
        data = self._call("read", name, self.fs.cat_file, path, missing_ok=True)
        return None if data is None else parse_manifest(data.decode(), self.where(name))

    def size(self, name: str) -> int | None:
        """Bytes of object `name`, None if there is none; from one listing of the prefix, taken on the
        first call (no request per shard: part_done / merge_parts use a fresh RemoteDir each call)."""
        if self._sizes is None:
            self.fs.invalidate_cache(self.root)
            entries = self._call("listing", "", lambda: self.fs.ls(self.root, detail=True), missing_ok=True) or []
            self._sizes = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e["size"] for e in entries
                           if e.get("type") == "file"}
        return self._sizes.get(name)

    def close(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


def output_dir(path: str | Path) -> LocalDir | RemoteDir:
    """The writer side of a dataset location: a URL (str with a scheme) is remote, anything else local."""
    return RemoteDir(path) if is_url(path) else LocalDir(path)
