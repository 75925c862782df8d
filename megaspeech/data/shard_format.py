"""The shard format itself (both directions): field encoding, .npy decoding without pickle,
streaming tar reading, sample checks. The public interface is megaspeech.data.shards (which re-exports
these names); see its docstring for the sample kinds and their fields."""
from __future__ import annotations

import io
import json
import math
import re
import tarfile
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np

from megaspeech.vocab import Vocab

FORMAT = "megaspeech-shards/1"
KINDS = ("text", "speech", "interleaved", "audio")
# `audio`: raw speech for the speech tokenizer (audio.flac bytes, optional transcript), no tokens.
REQUIRED = {"text": ("tokens",), "speech": ("codes",), "interleaved": ("tokens", "modality"), "audio": ("audio.flac",)}
TOKEN_FIELDS = {"text": ("tokens",), "speech": ("codes", "text"), "interleaved": ("tokens",), "audio": ()}
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
        if a.size and int(a.min()) < 0:
            raise ShardError(f"{where}: field {k!r} has a negative id {int(a.min())}")
    if kind == "interleaved":
        m = sample["modality"]
        if not isinstance(m, np.ndarray) or m.shape != sample["tokens"].shape or not np.issubdtype(m.dtype, np.integer):
            raise ShardError(f"{where}: field 'modality' must be an integer array shaped like 'tokens'")
    if vocab is not None:
        if kind == "speech" and sample["codes"].size and int(sample["codes"].max()) >= vocab.speech_size:
            raise ShardError(f"{where}: speech code {int(sample['codes'].max())} >= vocab.speech_size={vocab.speech_size}")
        # per kind: a `text` sample holds text ids only (no speech codes, no specials); interleaved
        # tokens may be any unified id; a speech pair's transcript is text ids
        limits = {"text": (("tokens", vocab.text_size, "vocab.text_size"),),
                  "speech": (("text", vocab.text_size, "vocab.text_size"),),
                  "interleaved": (("tokens", vocab.size, "the vocabulary size"),)}.get(kind, ())
        for k, hi, name in limits:
            a = sample.get(k)
            if isinstance(a, np.ndarray) and a.size and int(a.max()) >= hi:
                raise ShardError(f"{where}: field {k!r} has id {int(a.max())} >= {name}={hi}: outside the "
                                 f"{kind!r} id range of the vocab layout; re-create the shard with the right vocab")
    if kind == "interleaved" and sample["modality"].size and int(sample["modality"].max()) > 1:
        raise ShardError(f"{where}: field 'modality' has value {int(sample['modality'].max())}; only 0 (text) "
                         f"and 1 (speech) exist")


def count_tokens(kind: str, sample: dict) -> int:
    return int(sum(len(sample[k]) for k in TOKEN_FIELDS[kind] if k in sample))


# ---------------------------------------------------------------------------------- reading
class _Reader:
    """Exact-size reads over a stream's chunks; a read inside one chunk is a zero-copy memoryview."""

    def __init__(self, stream, head: bytes = b""):
        self.stream, self.buf, self.pos, self.base = stream, head, 0, 0
        self.step = getattr(stream, "chunk", 4 << 20)  # a ShardStream's chunk size: its chunks come uncopied

    def take(self, n: int):
        if self.pos + n <= len(self.buf):
            self.pos += n
            return memoryview(self.buf)[self.pos - n:self.pos]
        parts, need = [self.buf[self.pos:]], n - (len(self.buf) - self.pos)
        self.base += len(self.buf)
        self.buf, self.pos = b"", 0
        while need > 0:  # only the bytes that cross into the next chunk(s) are copied
            c = self.stream.read(max(need, self.step))
            if not c:
                break
            if len(c) > need:
                self.buf, self.pos = c, need
                parts.append(c[:need])
                break
            parts.append(c)
            self.base += len(c)
            need -= len(c)
        return memoryview(b"".join(parts))

    def read(self, n: int = -1) -> bytes:  # file-like, for tarfile
        return bytes(self.take(n if n >= 0 else 1 << 62))

    @property
    def offset(self) -> int:
        return self.base + self.pos


def _ustar_header(h: bytes, where: str, at: int) -> tuple[str, int]:
    """(name, size) of a plain ustar file header, its checksum checked."""
    try:
        size = int(h[124:136].rstrip(b"\0 ") or b"0", 8)
        chk = int(h[148:156].rstrip(b"\0 ") or b"0", 8)
    except ValueError:
        raise ShardError(f"{where}: corrupt tar header at byte {at}; re-create the shard") from None
    if chk != sum(h[:148]) + 256 + sum(h[156:]):
        raise ShardError(f"{where}: corrupt tar header at byte {at} (bad checksum); re-create the shard")
    name = h[:100].split(b"\0", 1)[0].decode()
    if h[345] != 0:  # ustar prefix field
        name = h[345:500].split(b"\0", 1)[0].decode() + "/" + name
    return name, size


def _ustar_members(r: _Reader, where: str):
    """(name, data) of plain-file ustar members, headers checksummed; at the first header that is
    anything else (pax, GNU long names, links) the rest of the tar goes to tarfile (`r|`)."""
    while True:
        buf, pos = r.buf, r.pos
        n, mv = len(buf), memoryview(buf)
        while pos + 512 <= n:  # members wholly inside the buffered chunk: no copy, no call per read
            h = buf[pos:pos + 512]
            if h[0] == 0 or h[156] not in (0x30, 0):
                break
            name, size = _ustar_header(h, where, r.base + pos)
            if pos + 512 + size > n:
                break
            yield name, mv[pos + 512:pos + 512 + size]
            pos += 512 + size + (-size % 512)
        r.pos = min(pos, n)
        if pos > n:  # the last member's padding runs past the chunk
            r.take(pos - n)
        at = r.offset  # one member across chunk ends, the end of the archive, or a foreign header
        h = bytes(r.take(512))
        if len(h) < 512:
            raise ShardError(f"{where}: truncated tar (no end-of-archive marker at byte {at}); re-create the shard")
        if h[0] == 0 and h.count(0) == 512:
            return  # end-of-archive block
        if h[0] == 0 or h[156] not in (0x30, 0):  # not a plain ustar file: tarfile reads the rest
            yield from _tarfile_members(_Reader(r, h), where)
            return
        name, size = _ustar_header(h, where, at)
        data = r.take(size)
        if len(data) != size:
            raise ShardError(f"{where}: truncated tar (member {name} runs past the end at byte {r.offset}); "
                             f"re-create the shard")
        r.take(-size % 512)
        yield name, data


def _tarfile_members(r: _Reader, where: str):
    try:
        with tarfile.open(fileobj=r, mode="r|") as tf:
            for m in tf:
                if m.isfile():
                    data = tf.extractfile(m).read()
                    if len(data) != m.size:
                        raise ShardError(f"{where}: truncated tar (member {m.name} runs past the end); "
                                         f"re-create the shard")
                    yield m.name, data
    except tarfile.TarError as e:
        raise ShardError(f"{where}: corrupt or truncated tar ({e}) near byte {r.offset}; re-create the shard") from None


def iter_tar(stream, where: str) -> Iterator[tuple[str, dict]]:
    """Samples of a tar read as it streams (no seek, nothing held but the current sample):
    (key, {field_with_ext: bytes or memoryview}) in file order, members grouped by key as WebDataset
    does. `stream` needs only read(n). Plain ustar members (what ShardWriter writes) are parsed here,
    anything else by tarfile in stream mode."""
    key, fields = None, {}
    r = _Reader(stream)
    for name, data in _ustar_members(r, where):
        k, _, field = name.rpartition("/")[2].partition(".")
        if k != key:
            if key is not None:
                yield key, fields
            key, fields = k, {}
        fields[field] = data
    while r.take(1 << 20):  # to the real end (record padding): the stream checks size and sha256 there
        pass
    if key is not None:
        yield key, fields


def decode_fields(key: str, fields: dict[str, bytes], where: str) -> dict:
    """Decode one sample's members: .npy -> ndarray (zero-copy), .txt -> str, .json -> value, else bytes."""
    out = {}
    for field, raw in fields.items():
        name, _, ext = field.rpartition(".")
        ext = ext.lower()
        loc = f"{where} key {key!r} field {field!r}"
        if ext in PICKLE_EXTS:
            raise ShardError(f"{loc}: pickle payload refused (megaspeech never unpickles shard data)")
        if ext == "npy":
            out[name] = decode_npy(raw, loc)
        elif ext == "txt":
            try:
                out[name] = bytes(raw).decode()
            except UnicodeDecodeError as e:
                raise ShardError(f"{loc}: not UTF-8 text ({e}); re-create the shard") from None
        elif ext == "json":
            try:
                out[name] = json.loads(bytes(raw))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ShardError(f"{loc}: not valid JSON ({e}); re-create the shard") from None
        else:
            out[field] = bytes(raw)
    return out


def read_manifest(path: Path) -> dict:
    """A manifest (dataset or part) as a dict; a damaged one is a ShardError naming the file."""
    return parse_manifest(Path(path).read_text(), path)


def parse_manifest(text: str | bytes, path) -> dict:
    """A manifest's text (read from `path`, a file or URL) as a dict, checked as read_manifest does."""
    try:
        m = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: not valid JSON ({e}); the manifest is damaged: re-run the prep tool "
                         f"for this dataset (finished shards are kept) or restore the file") from None
    if not isinstance(m, dict) or not isinstance(m.get("shards"), list):
        raise ShardError(f"{path}: not a megaspeech manifest (no `shards` list); re-run the prep tool")
    for s in m["shards"]:
        check_shard_name(s.get("name") if isinstance(s, dict) else s, path)
    return m


def check_shard_name(name, manifest: Path) -> None:
    """A shard entry must name a file inside the dataset's own directory: a relative path with no `..`
    component and not absolute, so a manifest never makes a reader open files elsewhere."""
    if not isinstance(name, str) or not name.strip("/") or PurePosixPath(name).is_absolute() \
            or ".." in PurePosixPath(name).parts:
        raise ShardError(f"{manifest}: shard entry {name!r} escapes the dataset directory {Path(manifest).parent} "
                         f"(shard names must be relative paths inside it, no `..` or absolute paths); "
                         f"fix the manifest or re-run the prep tool")
