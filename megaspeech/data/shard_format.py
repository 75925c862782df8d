"""The shard format itself (both directions): field encoding, .npy decoding without pickle,
tar indexing, sample checks. The public interface is megaspeech.data.shards (which re-exports
these names); see its docstring for the sample kinds and their fields."""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
import tarfile
from pathlib import Path, PurePosixPath

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
    try:
        m = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
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
