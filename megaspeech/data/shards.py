"""The one shard format: WebDataset tar shards plus a manifest written last and atomically.

Every data-preparation tool (text, speech tokenizer, interleaving) writes through `ShardWriter`
and every reader goes through `open_dataset` / `read_shard`, so there is one manifest format,
one validation path and one resume rule.

A dataset directory holds
    shard-000000.tar ...   WebDataset tars; member `<key>.<field>.<ext>` (key has no dots)
    manifest.json          written last: kind, vocab layout, meta, per-shard samples/tokens/bytes/sha256
                           and `docs` (the distinct `doc` ids of its samples: provenance, read by the
                           contamination check without decoding a sample)
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
  audio        audio.flac bytes   16 kHz mono FLAC, the speech tokenizer's input (no tokens)
               transcript str     optional; duration, source as above
Every kind: doc  str  required: the id of the document or recording the sample came from (provenance),
               `<corpus>/<name>`, one scheme across kinds so that one address has one id in text and
               speech: corpora documents as megaspeech.data.corpora names them (`sotu/<file id>`,
               `kjv/<chapter>`, `shakespeare/<text>`, `files/<file stem>`, HF rows); a recording or audio
               file by its stem (`files/<stem>`); derived samples (speech codes, interleaved, spoken QA)
               copy the doc of the sample or passage they were made from.
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
import os
import tarfile
from pathlib import Path
from typing import Iterator

from megaspeech.data.remote import IOSettings, Location, ShardStream
from megaspeech.data.shard_format import (FORMAT, KINDS, PICKLE_EXTS, REQUIRED, TOKEN_FIELDS, _KEY_RE,  # noqa: F401
                                          ShardError, _encode_field, _token_dtype, check_sample, count_tokens,
                                          decode_fields, decode_npy, iter_tar, parse_manifest, read_manifest)
from megaspeech.data.remote_write import output_dir
from megaspeech.vocab import Vocab


# ---------------------------------------------------------------------------------- writing
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
        w.write("kjv_0001", {"tokens": ids, "doc": "kjv/Gen1"})

    Each shard is written as a hidden temp file and renamed when complete; the manifest is
    written only by a clean `close()`, so a crash leaves no shard set that looks complete.
    `out_dir` may be an fsspec URL (s3://bucket/prefix): shards are then staged locally, uploaded
    and size-checked one by one, the manifest uploaded last (megaspeech.data.remote_write).
    """

    def __init__(self, out_dir: str | Path, kind: str, vocab: Vocab | None, *, max_bytes: int = 128 << 20,
                 max_samples: int | None = None, prefix: str = "shard", meta: dict | None = None,
                 manifest_name: str = "manifest.json"):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.dest = output_dir(out_dir)
        self.dest.mkdir()
        self.out = self.dest.location  # the destination: a Path, or the URL
        self.kind, self.vocab, self.prefix, self.meta = kind, vocab, prefix, dict(meta or {})
        self.max_bytes, self.max_samples, self.manifest_name = max_bytes, max_samples, manifest_name
        self.tok_dtype = _token_dtype(vocab)
        self.shards: list[dict] = []
        self._tar = self._raw = self._hf = None
        self._cur: dict | None = None
        self._keys: set[str] = set()
        # a rewrite must not look complete before it is: drop the previous manifest first
        self.dest.remove(manifest_name)
        if vocab is not None:
            self.dest.write_text("vocab.json", json.dumps(vocab.to_dict(), indent=2))  # = Vocab.save

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._cur = {"name": name, "samples": 0, "tokens": 0}
        self._docs: set[str] = set()
        # written where the shard goes (local) or in a local staging dir (URL), then published
        self._tmp = self.dest.staging / f".{name}.tmp{os.getpid()}"
        self._raw = open(self._tmp, "wb")
        self._hf = _HashingFile(self._raw)
        self._tar = tarfile.open(fileobj=self._hf, mode="w", format=tarfile.USTAR_FORMAT)

    def _finish_shard(self) -> None:
        self._tar.close()  # writes the end-of-archive blocks through the hashing wrapper
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        self._cur.update(bytes=self._hf.n, sha256=self._hf.h.hexdigest(), docs=sorted(self._docs))
        self.dest.publish(self._tmp, self._cur["name"], self._hf.n)  # rename, or upload + size check
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
        if not isinstance(sample.get("doc"), str) or not sample["doc"]:
            raise ShardError(f"sample {key!r} of the {self.kind!r} shards in {self.out}: no `doc` (the id of the "
                             f"document or recording it came from, e.g. 'sotu/2024-Biden-1'); every sample needs one "
                             f"so the evaluation's contamination check can read provenance from the manifest: the "
                             f"tool writing these shards must set it (see megaspeech.data.shards)")
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
        self._docs.add(sample["doc"])  # provenance: the manifest names every source document, no sample decoding
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
        self.dest.write_text(self.manifest_name, json.dumps(manifest, indent=1))  # last: after every shard
        self.dest.close()
        return manifest

    def abort(self) -> None:
        if self._tar is not None:
            self._raw.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = None
        self.dest.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()  # no manifest: the partial output never looks complete


# ---------------------------------------------------------------------------------- reading
def read_shard(path: str | Path, kind: str | None = None, sha256: str | None = None,
               vocab: Vocab | None = None, io_cfg: IOSettings | None = None) -> Iterator[tuple[str, dict]]:
    """Iterate (key, sample) of one shard (a file or URL) as it streams; checks the checksum when
    given (a local file before its first sample, a remote one at its end) and each sample's kind."""
    where = str(path)
    loc = Location(where.rsplit("/", 1)[0] if "/" in where else ".", io_cfg)
    return _read_shard(loc, where.rsplit("/", 1)[-1], kind, sha256, vocab)


def _read_shard(loc: Location, name: str, kind: str | None, sha256: str | None,
                vocab: Vocab | None) -> Iterator[tuple[str, dict]]:
    where = loc.url(name)
    stream = ShardStream(loc, name, None, sha256, verify_first=loc.kind == "local")
    try:
        for key, fields in iter_tar(stream, where):
            sample = decode_fields(key, fields, where)
            if kind is not None:
                check_sample(kind, sample, f"{where} key {key!r}", vocab)
            yield key, sample
    finally:
        stream.close()


class Dataset:
    """A validated dataset: manifest read, shards checked to exist with the listed size.
    `path`: a local directory or a URL (s3://, http(s)://, pipe:, see megaspeech.data.remote);
    `self.path` is then a Path or the URL string, `self.location` reads its files either way."""

    def __init__(self, path: str | Path, vocab: Vocab | None = None, kind: str | None = None, strict: bool = True,
                 io_cfg: IOSettings | None = None):
        """strict=False lets a shard of the wrong size through (read-time checks skip it later)."""
        self.location = Location(path, io_cfg)
        self.path = self.location.path if self.location.kind == "local" else str(self.location)
        mpath = self.location.url("manifest.json")
        if self.location.kind == "local":
            if not (self.path / "manifest.json").is_file():
                raise ShardError(f"{mpath} not found: {self.path} is not a finished dataset "
                                 f"(run launch/prepare_data.py, or merge_parts() for job-array output)")
            m = read_manifest(self.path / "manifest.json")
        else:  # the manifest comes from the same place as the shards
            m = parse_manifest(self.location.read("manifest.json"), mpath)
        if m.get("format") != FORMAT:
            raise ShardError(f"{mpath}: format {m.get('format')!r}, expected {FORMAT!r}; re-create the dataset")
        if kind is not None and m["kind"] != kind:
            raise ShardError(f"{mpath}: kind {m['kind']!r} but {kind!r} was expected")
        if vocab is not None and m.get("vocab") is not None:
            vocab.check_same(Vocab.from_dict(m["vocab"]), f"dataset {self.path}")
        self.manifest, self.kind, self.vocab = m, m["kind"], vocab
        self.shards: list[dict] = m["shards"]
        sizes = self._sizes()
        for s in self.shards if sizes is not None else []:
            p = self.location.url(s["name"])
            if s["name"] not in sizes:
                raise ShardError(f"{p}: listed in {mpath} but missing; restore it or re-run the prep tool "
                                 f"for this dataset")
            if strict and sizes[s["name"]] != s["bytes"]:
                raise ShardError(f"{p}: {sizes[s['name']]} bytes, manifest says {s['bytes']} (truncated or "
                                 f"replaced); re-create the dataset")

    def _sizes(self) -> dict[str, int] | None:
        """Every listed shard's size (local: stat; S3: one listing; HTTP, pipe: None, checked on open)."""
        if self.location.kind != "local":
            return self.location.sizes()
        return {s["name"]: (self.path / s["name"]).stat().st_size for s in self.shards
                if (self.path / s["name"]).is_file()}

    @property
    def num_samples(self) -> int:
        return self.manifest["samples"]

    @property
    def num_tokens(self) -> int:
        return self.manifest["tokens"]

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        for s in self.shards:
            yield from _read_shard(self.location, s["name"], self.kind, s["sha256"], self.vocab)


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
    """True if part `part` finished: its manifest exists and every shard it lists has its size.
    out_dir: a local directory or an fsspec URL (one listing per call there)."""
    return _part_done(output_dir(out_dir), part)


def _part_done(d, part: int) -> bool:
    m = d.read_manifest(f"{part_prefix(part)}.manifest.json")
    return m is not None and all(d.size(s["name"]) == s["bytes"] for s in m["shards"])


def unfinished_parts(out_dir: str | Path, parts) -> list[int]:
    """Those of the part numbers `parts` (e.g. a range) that are not `part_done` (at a URL: one listing)."""
    d = output_dir(out_dir)
    return [i for i in parts if not _part_done(d, i)]


def parts_for_worker(n_parts: int, worker: int, n_workers: int) -> range:
    """Disjoint contiguous part range of one job-array worker (e.g. SLURM_ARRAY_TASK_ID)."""
    per = -(-n_parts // n_workers)
    return range(min(worker * per, n_parts), min((worker + 1) * per, n_parts))


def merge_parts(out_dir: str | Path, n_parts: int, meta: dict | None = None) -> dict:
    """Combine part manifests 0..n_parts-1 into the dataset manifest.json (fails naming missing parts)."""
    d = output_dir(out_dir)
    out = d.location
    missing = [i for i in range(n_parts) if not _part_done(d, i)]
    if missing:
        raise ShardError(f"{out}: parts {missing[:10]}{'...' if len(missing) > 10 else ''} not finished; "
                         f"re-run the prep tool for them (finished parts are skipped)")
    parts = [d.read_manifest(f"{part_prefix(i)}.manifest.json") for i in range(n_parts)]
    for p in parts[1:]:
        if (p["kind"], p["vocab"], p["token_dtype"]) != (parts[0]["kind"], parts[0]["vocab"], parts[0]["token_dtype"]):
            raise ShardError(f"{out}: parts disagree on kind/vocab/token dtype; re-run them with one config")
    shards = [s for p in parts for s in p["shards"]]
    manifest = dict(parts[0], shards=shards, meta={**parts[0]["meta"], **(meta or {})},
                    samples=sum(s["samples"] for s in shards), tokens=sum(s["tokens"] for s in shards))
    d.write_text("manifest.json", json.dumps(manifest, indent=1))
    return manifest
