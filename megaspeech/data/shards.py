"""The one shard format: WebDataset tar shards plus a manifest written last and atomically.

Every data-preparation tool (text, speech tokenizer, interleaving) writes through `ShardWriter`
and every reader goes through `open_dataset` / `read_shard`, so there is one manifest format,
one validation path and one resume rule.

A dataset directory holds
    shard-000000.tar ...   WebDataset tars; member `<key>.<field>.<ext>` (key has no dots)
    manifest.json          written last: kind, vocab layout, meta, per-shard samples/tokens/bytes/sha256
    vocab.json             the unified vocabulary (megaspeech.vocab.Vocab) the tokens live in

Sample kinds and their fields (arrays stored as .npy, read with allow_pickle=False):
  text         tokens    int [T]  SentencePiece ids (unified space = text ids), no bos/eos
               source    str      optional: corpus / document name
  speech       codes     int [T]  raw speech codes in [0, vocab.speech_size) (NOT offset)
               text      int [S]  optional transcript text ids: present -> supervised ASR/TTS
                                  pair, absent -> unsupervised speech
               duration  float    optional: seconds of audio
               source    str      optional
  interleaved  tokens    int [T]  unified ids; speech spans wrapped in <|begin_of_speech|> ...
                                  <|end_of_speech|>
               modality  uint8 [T] 0 text / 1 speech, per token
               source    str      optional
Extra fields are allowed: str -> .txt, int/float -> .json, bytes kept as-is (name the field with
its extension, e.g. `audio.flac`). Pickle payloads (.pyd/.pickle/.pkl/.pth/.pt, object arrays)
are refused on write and on read.

Resume rule for job arrays: work is split into numbered parts (e.g. one per input file or
input-shard range). Part `i` writes `part-<i>-<n>.tar` and `part-<i>.manifest.json` (last);
`part_done(out_dir, i)` tells a restarted worker to skip it; `merge_parts(out_dir, n)` writes the
dataset `manifest.json` once all parts exist.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np

from megaspeech.vocab import Vocab

FORMAT = "megaspeech-shards/1"
KINDS = ("text", "speech", "interleaved")
REQUIRED = {"text": ("tokens",), "speech": ("codes",), "interleaved": ("tokens", "modality")}
TOKEN_FIELDS = {"text": ("tokens",), "speech": ("codes", "text"), "interleaved": ("tokens",)}
PICKLE_EXTS = {"pyd", "pickle", "pkl", "pth", "pt"}
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


class ShardError(ValueError):
    """A bad shard or sample; the message names the shard file and the sample key."""


# ---------------------------------------------------------------------------------- encoding
def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


# the header numpy writes for a plain 1-D array, parsed without literal_eval (hot path)
_NPY_1D = re.compile(rb"\{'descr': '([<>|][a-z][0-9]+)', 'fortran_order': False, 'shape': \((\d+),\), \} *\n")
_DTYPES: dict[bytes, np.dtype] = {}


def decode_npy(data: bytes | memoryview, where: str) -> np.ndarray:
    """Parse .npy bytes without ever unpickling; zero-copy view into `data`."""
    m = None
    if bytes(data[:8]) == b"\x93NUMPY\x01\x00":
        hlen = data[8] | (data[9] << 8)
        m = _NPY_1D.fullmatch(bytes(data[10:10 + hlen]))
    if m is not None:
        dtype = _DTYPES.get(m.group(1))
        if dtype is None:
            dtype = _DTYPES.setdefault(m.group(1), np.dtype(m.group(1).decode()))
        shape, fortran, off = (int(m.group(2)),), False, 10 + hlen
    else:
        f = io.BytesIO(data)
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)  # literal_eval of the header dict: no pickle involved
        except Exception as e:
            raise ShardError(f"{where}: not a valid .npy array ({e})") from None
        off = f.tell()
    if dtype.hasobject:
        raise ShardError(f"{where}: object array (pickle payload) refused; store plain numeric arrays")
    count = math.prod(shape)
    if off + count * dtype.itemsize > len(data):
        raise ShardError(f"{where}: .npy data truncated")
    a = np.frombuffer(data, dtype=dtype, count=count, offset=off)
    return a.reshape(shape, order="F" if fortran else "C")


def _token_dtype(vocab: Vocab | None) -> np.dtype:
    return np.dtype(np.uint16) if vocab is not None and vocab.size <= 65536 else np.dtype(np.int32)


def _encode_field(name: str, value, kind: str, tok_dtype: np.dtype) -> tuple[str, bytes]:
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise ShardError(f"field {name!r}: object arrays are not allowed (they need pickle)")
        if name in TOKEN_FIELDS[kind]:
            if not np.issubdtype(value.dtype, np.integer) or value.ndim != 1:
                raise ShardError(f"field {name!r}: token arrays must be 1-D integers, got {value.dtype} {value.shape}")
            if value.size and (value.min() < 0 or value.max() > np.iinfo(tok_dtype).max):
                raise ShardError(f"field {name!r}: ids outside [0, {np.iinfo(tok_dtype).max}]")
            value = value.astype(tok_dtype, copy=False)
        return f"{name}.npy", _npy_bytes(value)
    if isinstance(value, str):
        return f"{name}.txt", value.encode()
    if isinstance(value, (bool, int, float, np.integer, np.floating)):
        return f"{name}.json", json.dumps(value.item() if isinstance(value, np.generic) else value).encode()
    if isinstance(value, (bytes, bytearray)):
        if "." not in name:
            raise ShardError(f"bytes field {name!r} needs its extension in the name, e.g. 'audio.flac'")
        return name, bytes(value)
    raise ShardError(f"field {name!r}: unsupported type {type(value).__name__} (use ndarray/str/number/bytes)")


def check_sample(kind: str, sample: dict, where: str, vocab: Vocab | None = None) -> None:
    """Kind-specific checks shared by writer and reader (keys, dtypes, lengths, id ranges)."""
    for k in REQUIRED[kind]:
        if k not in sample:
            raise ShardError(f"{where}: missing field {k!r} required for kind {kind!r}")
    for k in TOKEN_FIELDS[kind]:
        a = sample.get(k)
        if a is None:
            continue
        if not isinstance(a, np.ndarray) or a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise ShardError(f"{where}: field {k!r} must be a 1-D integer array, got "
                             f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    if kind == "interleaved":
        m = sample["modality"]
        if not isinstance(m, np.ndarray) or m.shape != sample["tokens"].shape or not np.issubdtype(m.dtype, np.integer):
            raise ShardError(f"{where}: field 'modality' must be an integer array shaped like 'tokens'")
    if vocab is not None:
        if kind == "speech" and sample["codes"].size and int(sample["codes"].max()) >= vocab.speech_size:
            raise ShardError(f"{where}: speech code {int(sample['codes'].max())} >= vocab.speech_size={vocab.speech_size}")
        for k, hi in (("tokens", vocab.size), ("text", vocab.text_size)):
            a = sample.get(k)
            if isinstance(a, np.ndarray) and a.size and int(a.max()) >= hi:
                raise ShardError(f"{where}: field {k!r} has id {int(a.max())} >= {hi} (vocab layout)")


def count_tokens(kind: str, sample: dict) -> int:
    return int(sum(len(sample[k]) for k in TOKEN_FIELDS[kind] if k in sample))


# ---------------------------------------------------------------------------------- writing
def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _final_size(n: int) -> int:
    # tarfile closes with two zero blocks and pads the archive to a 10 KiB record
    return -(-(n + 1024) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class _HashingFile(io.RawIOBase):
    """File wrapper hashing bytes as tarfile writes them (no second read of the shard)."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def writable(self):
        return True

    def tell(self):
        return self.n

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b)


class ShardWriter:
    """Write samples of one kind into size-bounded tar shards; the manifest comes last.

    with ShardWriter(out, "text", vocab, meta={"corpus": "kjv"}) as w:
        w.write("kjv_0001", {"tokens": ids, "source": "kjv"})

    Each shard is written as a hidden temp file and renamed when complete; the manifest is
    written only by a clean `close()`, so a crash leaves no shard set that looks complete.
    """

    def __init__(self, out_dir: str | Path, kind: str, vocab: Vocab | None, *, max_bytes: int = 128 << 20,
                 max_samples: int | None = None, prefix: str = "shard", meta: dict | None = None,
                 manifest_name: str = "manifest.json"):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.kind, self.vocab, self.prefix, self.meta = kind, vocab, prefix, dict(meta or {})
        self.max_bytes, self.max_samples, self.manifest_name = max_bytes, max_samples, manifest_name
        self.tok_dtype = _token_dtype(vocab)
        self.shards: list[dict] = []
        self._tar = self._raw = self._hf = None
        self._cur: dict | None = None
        self._keys: set[str] = set()
        if vocab is not None:
            vocab.save(self.out / "vocab.json")

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._cur = {"name": name, "samples": 0, "tokens": 0}
        self._tmp = self.out / f".{name}.tmp{os.getpid()}"
        self._raw = open(self._tmp, "wb")
        self._hf = _HashingFile(self._raw)
        self._tar = tarfile.open(fileobj=self._hf, mode="w", format=tarfile.USTAR_FORMAT)

    def _finish_shard(self) -> None:
        self._tar.close()  # writes the end-of-archive blocks through the hashing wrapper
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        self._cur.update(bytes=self._hf.n, sha256=self._hf.h.hexdigest())
        os.replace(self._tmp, self.out / self._cur["name"])
        self.shards.append(self._cur)
        self._tar = self._cur = None

    def write(self, key: str, sample: dict) -> None:
        """Add one sample. key: unique, [A-Za-z0-9_-]+; sample: field -> ndarray|str|number|bytes."""
        if not _KEY_RE.match(key):
            raise ShardError(f"sample key {key!r} must match [A-Za-z0-9_-]+ (no dots: WebDataset splits on them)")
        if key in self._keys:
            raise ShardError(f"sample key {key!r} written twice")
        for name in sample:
            ext = name.rsplit(".", 1)[-1].lower()
            if ext in PICKLE_EXTS:
                raise ShardError(f"field {name!r}: pickle payloads are never written to shards")
        check_sample(self.kind, sample, f"sample {key!r}", self.vocab)
        members = [_encode_field(n, v, self.kind, self.tok_dtype) for n, v in sample.items()]
        size = sum(512 + -(-len(b) // 512) * 512 for _, b in members)
        if self._tar is not None and (
                (self.max_samples and self._cur["samples"] >= self.max_samples)
                or (self._cur["samples"] and _final_size(self._hf.n + size) > self.max_bytes)):
            self._finish_shard()
        if self._tar is None:
            self._open()
        for ext_name, data in members:
            info = tarfile.TarInfo(f"{key}.{ext_name}")
            info.size, info.mode, info.mtime = len(data), 0o444, 0  # reproducible bytes
            self._tar.addfile(info, io.BytesIO(data))
        self._keys.add(key)
        self._cur["samples"] += 1
        self._cur["tokens"] += count_tokens(self.kind, sample)

    def close(self) -> dict:
        """Finish the open shard, then write the manifest atomically; returns the manifest."""
        if self._tar is not None:
            self._finish_shard()
        manifest = {
            "format": FORMAT, "kind": self.kind,
            "vocab": None if self.vocab is None else self.vocab.layout(),
            "token_dtype": self.tok_dtype.name, "meta": self.meta, "shards": self.shards,
            "samples": sum(s["samples"] for s in self.shards), "tokens": sum(s["tokens"] for s in self.shards),
        }
        _atomic_write_text(self.out / self.manifest_name, json.dumps(manifest, indent=1))
        return manifest

    def abort(self) -> None:
        if self._tar is not None:
            self._raw.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()  # no manifest: the partial output never looks complete


# ---------------------------------------------------------------------------------- reading
def _index_ustar(data: bytes, where: str) -> list[tuple[str, int, int]] | None:
    """(name, offset, size) of plain-file ustar members, headers checksummed; None if the tar
    uses anything else (long names, pax headers, links): tarfile handles those."""
    out, pos, n = [], 0, len(data)
    while pos + 512 <= n:
        h = data[pos:pos + 512]
        if h[0] == 0:
            if h.count(0) == 512:
                return out  # end-of-archive block
            return None
        if h[156] not in (0x30, 0):  # '0' or NUL: regular file
            return None
        try:
            size = int(h[124:136].rstrip(b"\0 ") or b"0", 8)
            chk = int(h[148:156].rstrip(b"\0 ") or b"0", 8)
        except ValueError:
            raise ShardError(f"{where}: corrupt tar header at byte {pos}; re-create the shard") from None
        if chk != sum(h[:148]) + 256 + sum(h[156:]):
            raise ShardError(f"{where}: corrupt tar header at byte {pos} (bad checksum); re-create the shard")
        name = h[:100].split(b"\0", 1)[0].decode()
        if h[345] != 0:  # ustar prefix field
            name = h[345:500].split(b"\0", 1)[0].decode() + "/" + name
        if pos + 512 + size > n:
            raise ShardError(f"{where}: truncated tar (member {name} runs past the end); re-create the shard")
        out.append((name, pos + 512, size))
        pos += 512 + -(-size // 512) * 512
    raise ShardError(f"{where}: truncated tar (no end-of-archive marker); re-create the shard")


def index_tar(data: bytes, where: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """Group tar members into samples: [(key, {field_with_ext: (offset, size)})] in file order."""
    members = _index_ustar(data, where)
    if members is not None:
        samples: list[tuple[str, dict]] = []
        for name, off, size in members:
            key, _, field = name.rpartition("/")[2].partition(".")
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][field] = (off, size)
        return samples
    samples = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                if m.offset_data + m.size > len(data):
                    raise ShardError(f"{where}: truncated tar (member {m.name} runs past the end)")
                base = m.name.rsplit("/", 1)[-1]
                key, _, field = base.partition(".")
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][field] = (m.offset_data, m.size)
    except tarfile.TarError as e:
        raise ShardError(f"{where}: corrupt or truncated tar ({e}); re-create the shard") from None
    return samples


def decode_sample(data: bytes, key: str, fields: dict[str, tuple[int, int]], where: str) -> dict:
    """Decode one sample's members: .npy -> ndarray, .txt -> str, .json -> value, else bytes."""
    mv = memoryview(data)
    out = {}
    for field, (off, size) in fields.items():
        name, _, ext = field.rpartition(".")
        ext = ext.lower()
        loc = f"{where} key {key!r} field {field!r}"
        if ext in PICKLE_EXTS:
            raise ShardError(f"{loc}: pickle payload refused (megaspeech never unpickles shard data)")
        raw = mv[off:off + size]
        if ext == "npy":
            out[name] = decode_npy(raw, loc)
        elif ext == "txt":
            out[name] = bytes(raw).decode()
        elif ext == "json":
            out[name] = json.loads(bytes(raw))
        else:
            out[field] = bytes(raw)
    return out


def read_shard(path: str | Path, kind: str | None = None, sha256: str | None = None,
               vocab: Vocab | None = None) -> Iterator[tuple[str, dict]]:
    """Iterate (key, sample) of one shard; checks the checksum when given and each sample's kind."""
    path = Path(path)
    data = load_shard_bytes(path, sha256)
    for key, fields in index_tar(data, str(path)):
        sample = decode_sample(data, key, fields, str(path))
        if kind is not None:
            check_sample(kind, sample, f"{path} key {key!r}", vocab)
        yield key, sample


def load_shard_bytes(path: Path, sha256: str | None = None, size: int | None = None) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ShardError(f"{path}: shard missing (was the dataset moved or partly deleted? re-run the prep tool)") from None
    if size is not None and len(data) != size:
        raise ShardError(f"{path}: {len(data)} bytes but the manifest says {size} (truncated?); re-create the shard")
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ShardError(f"{path}: sha256 does not match the manifest (corrupt); re-create the shard")
    return data


class Dataset:
    """A validated dataset directory: manifest read, shards checked to exist with the listed size."""

    def __init__(self, path: str | Path, vocab: Vocab | None = None, kind: str | None = None, strict: bool = True):
        """strict=False lets a shard of the wrong size through (read-time checks skip it later)."""
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not mpath.is_file():
            raise ShardError(f"{mpath} not found: {self.path} is not a finished dataset "
                             f"(run launch/prepare_data.py, or merge_parts() for job-array output)")
        m = json.loads(mpath.read_text())
        if m.get("format") != FORMAT:
            raise ShardError(f"{mpath}: format {m.get('format')!r}, expected {FORMAT!r}; re-create the dataset")
        if kind is not None and m["kind"] != kind:
            raise ShardError(f"{mpath}: kind {m['kind']!r} but {kind!r} was expected")
        if vocab is not None and m.get("vocab") is not None:
            vocab.check_same(Vocab.from_dict(m["vocab"]), f"dataset {self.path}")
        self.manifest, self.kind, self.vocab = m, m["kind"], vocab
        self.shards: list[dict] = m["shards"]
        for s in self.shards:
            p = self.path / s["name"]
            if not p.is_file():
                raise ShardError(f"{p}: listed in {mpath} but missing; restore it or re-run the prep tool "
                                 f"for this dataset")
            if strict and p.stat().st_size != s["bytes"]:
                raise ShardError(f"{p}: {p.stat().st_size} bytes, manifest says {s['bytes']} (truncated or "
                                 f"replaced); re-create the dataset")

    @property
    def num_samples(self) -> int:
        return self.manifest["samples"]

    @property
    def num_tokens(self) -> int:
        return self.manifest["tokens"]

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        for s in self.shards:
            yield from read_shard(self.path / s["name"], self.kind, s["sha256"], self.vocab)


def open_dataset(path: str | Path, vocab: Vocab | None = None, kind: str | None = None) -> Dataset:
    return Dataset(path, vocab, kind)


# ---------------------------------------------------------------------------------- resume rule
def part_prefix(part: int) -> str:
    return f"part-{part:05d}"


def part_writer(out_dir: str | Path, kind: str, vocab: Vocab | None, part: int, **kw) -> ShardWriter:
    """Writer for work unit `part` of a job array: deterministic names, its own part manifest."""
    return ShardWriter(out_dir, kind, vocab, prefix=part_prefix(part),
                       manifest_name=f"{part_prefix(part)}.manifest.json", **kw)


def part_done(out_dir: str | Path, part: int) -> bool:
    """True if part `part` finished: its manifest exists and every shard it lists has its size."""
    m = Path(out_dir) / f"{part_prefix(part)}.manifest.json"
    if not m.is_file():
        return False
    shards = json.loads(m.read_text())["shards"]
    return all((Path(out_dir) / s["name"]).is_file() and (Path(out_dir) / s["name"]).stat().st_size == s["bytes"]
               for s in shards)


def parts_for_worker(n_parts: int, worker: int, n_workers: int) -> range:
    """Disjoint contiguous part range of one job-array worker (e.g. SLURM_ARRAY_TASK_ID)."""
    per = -(-n_parts // n_workers)
    return range(min(worker * per, n_parts), min((worker + 1) * per, n_parts))


def merge_parts(out_dir: str | Path, n_parts: int, meta: dict | None = None) -> dict:
    """Combine part manifests 0..n_parts-1 into the dataset manifest.json (fails naming missing parts)."""
    out = Path(out_dir)
    missing = [i for i in range(n_parts) if not part_done(out, i)]
    if missing:
        raise ShardError(f"{out}: parts {missing[:10]}{'...' if len(missing) > 10 else ''} not finished; "
                         f"re-run the prep tool for them (finished parts are skipped)")
    parts = [json.loads((out / f"{part_prefix(i)}.manifest.json").read_text()) for i in range(n_parts)]
    for p in parts[1:]:
        if (p["kind"], p["vocab"], p["token_dtype"]) != (parts[0]["kind"], parts[0]["vocab"], parts[0]["token_dtype"]):
            raise ShardError(f"{out}: parts disagree on kind/vocab/token dtype; re-run them with one config")
    shards = [s for p in parts for s in p["shards"]]
    manifest = dict(parts[0], shards=shards, meta={**parts[0]["meta"], **(meta or {})},
                    samples=sum(s["samples"] for s in shards), tokens=sum(s["tokens"] for s in shards))
    _atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest
