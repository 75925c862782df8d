"""Audio files or `audio` shards in -> `speech` shards out (launch/tokenize_speech.py).

Work is cut into numbered parts (one per input shard, or `files_per_part` input files) so the
shared resume rule applies: a finished part (its manifest exists, shards complete) is skipped by
a restarted run or another job-array worker; `merge_parts` writes manifest.json at the end.
Each output sample: codes int [T] (raw speech codes 0..K-1, T = ceil(samples / (320 * tokenizer.pool))),
duration (s), source (file path or shard:key), doc (provenance: the input audio sample's `doc`, or
`files/<stem>` of an audio file), transcript (str) when known and `text` (ids of the project's
SentencePiece model) when a vocab with `sp_model` is given.
Audio that cannot be decoded is reported by name in `bad_audio.part-<i>.jsonl` and on stderr and
skipped (`on_bad_audio: skip`) or stops the run (`fail`). Audio longer than 30 s is cut into 30 s
segments on token boundaries, so the frame rule holds for the whole file.
"""
from __future__ import annotations

import glob
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from megaspeech.config.load import check
from megaspeech.data.shard_format import read_manifest
from megaspeech.data.remote_write import output_dir
from megaspeech.data.shards import merge_parts, part_done, part_writer, parts_for_worker, read_shard
from megaspeech.speech import audio_shards
from megaspeech.speech.audio import SAMPLE_RATE, AudioError, decode_audio, max_token_samples

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")


@dataclass
class TokenizeConfig:
    # defaults chain the tools: launch/train_speech_tokenizer.py writes runs/speech_tokenizer/tokenizer,
    # launch/make_speech_corpus.py runs/speech/train; the text-to-token preset reads runs/speech_tokens/train
    tokenizer: str = "runs/speech_tokenizer/tokenizer"  # dir from launch/train_speech_tokenizer.py
    # what that dir is: "megaspeech" (trained here), "glm4voice" (THUDM/glm-4-voice-tokenizer as
    # distributed: config.json + safetensors), "auto" = told apart by its files
    tokenizer_format: Literal["auto", "megaspeech", "glm4voice"] = "auto"
    inputs: list[str] = field(default_factory=lambda: ["runs/speech/train"])  # audio files, dirs, globs, `audio` shard dirs
    out_dir: str = "runs/speech_tokens/train"
    vocab_file: str | None = None  # vocab.json; with sp_model set, transcripts are also stored as ids
    files_per_part: int = 256
    batch_size: int = 16
    workers: int = 2
    on_bad_audio: Literal["skip", "fail"] = "skip"

    def __post_init__(self):
        check(self.files_per_part > 0, "tokenize.files_per_part", "must be > 0")
        check(self.batch_size > 0, "tokenize.batch_size", "must be > 0")
        check(self.workers > 0, "tokenize.workers", "must be > 0")
        check(self.tokenizer_format in ("auto", "megaspeech", "glm4voice"), "tokenize.tokenizer_format",
              "must be auto, megaspeech or glm4voice")


def plan_parts(inputs: list[str], files_per_part: int) -> list[dict]:
    """Deterministic work units: {"shard": path} per input shard, {"files": [...]} per file chunk."""
    parts, files = [], []
    for inp in inputs:
        p = Path(inp)
        if p.is_dir() and (p / "manifest.json").is_file():
            m = read_manifest(p / "manifest.json")  # shard names confined to the dataset
            if m["kind"] != "audio":
                raise ValueError(f"{p}: shards of kind {m['kind']!r}; tokenize_speech reads `audio` shards")
            parts.extend({"shard": str(p / s["name"]), "sha256": s["sha256"]} for s in m["shards"])
        elif p.is_dir():
            files.extend(sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTS))
        elif p.is_file():
            files.append(str(p))
        else:
            hits = sorted(glob.glob(inp, recursive=True))
            if not hits:
                raise FileNotFoundError(f"tokenize.inputs: {inp!r} matches no file, dir or shard set")
            files.extend(hits)
    for i in range(0, len(files), files_per_part):
        parts.append({"files": files[i:i + files_per_part]})
    return parts


def _iter_part(part: dict):
    """Yield (key, audio bytes or path, transcript or None, source, doc) for one work unit."""
    if "shard" in part:
        for key, s in read_shard(part["shard"], "audio", part["sha256"]):
            if not s.get("doc"):
                raise ValueError(f"{part['shard']} key {key!r}: no `doc` (the recording's id, provenance for the "
                                 f"contamination check); the audio shards predate it: re-make them with "
                                 f"launch/make_speech_corpus.py or launch/ingest_audio.py")
            yield key, audio_shards.audio_bytes(s, f"{part['shard']} key {key!r}"), s.get("transcript"), \
                f"{part['shard']}:{key}", s["doc"]
    else:
        for f in part["files"]:
            key = "".join(c if c.isalnum() or c in "_-" else "_" for c in Path(f).stem)
            txt = Path(f).with_suffix(".txt")
            yield key, f, txt.read_text().strip() if txt.is_file() else None, f, f"files/{Path(f).stem}"


class Tokenizer:
    """Loaded once per worker process."""

    def __init__(self, cfg: TokenizeConfig):
        import torch
        from megaspeech.speech.tokenizer import load_tokenizer, tokenizer_format
        from megaspeech.vocab import Vocab
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        self.format = tokenizer_format(cfg.tokenizer, cfg.tokenizer_format)
        self.model, self.whisper, self.tcfg = load_tokenizer(cfg.tokenizer, self.format)
        # paths inside vocab.json are relative to that file (Vocab.load resolves them)
        self.vocab = Vocab.load(cfg.vocab_file) if cfg.vocab_file else None
        self.text_tok = None
        if self.vocab is not None:
            from megaspeech.speech.tokenizer import check_speech_vocab
            check_speech_vocab(self.vocab.speech_size, f"tokenize.vocab_file={cfg.vocab_file}", cfg.tokenizer)
            if self.vocab.sp_model or self.vocab.hf_tokenizer:
                from megaspeech.data.text import TextTokenizer
                self.text_tok = TextTokenizer(self.vocab)

    def codes(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """Utterances of any length -> codes; > 30 s is cut into 30 s segments on token boundaries."""
        from megaspeech.speech.tokenizer import tokenize_audios
        seg = max_token_samples(self.model.pool)
        pieces, owner = [], []
        for i, a in enumerate(audios):
            for s in range(0, a.shape[0], seg):
                pieces.append(a[s:s + seg])
                owner.append(i)
        out = [[] for _ in audios]
        for c, i in zip(tokenize_audios(self.model, pieces), owner):
            out[i].append(c)
        return [np.concatenate(c) for c in out]


def run_part(tok: Tokenizer, cfg: TokenizeConfig, part: dict, index: int) -> tuple[int, list[dict]]:
    """Tokenize one work unit into part-<index>-*.tar + its manifest. Returns (samples, bad list)."""
    bad, n = [], 0
    with part_writer(cfg.out_dir, "speech", tok.vocab, index,
                     meta={"tokenizer": str(cfg.tokenizer), "tokenizer_format": tok.format,
                           "codebook_size": tok.tcfg.codebook_size, "frame_rate_hz": tok.tcfg.frame_rate}) as w:
        batch = []

        def flush():
            nonlocal n
            for (key, a, text, src, doc), codes in zip(batch, tok.codes([b[1] for b in batch])):
                sample = {"codes": codes.astype(np.int64), "duration": a.shape[0] / SAMPLE_RATE, "source": src,
                          "doc": doc}
                if text is not None:
                    sample["transcript"] = text
                    if tok.text_tok is not None:
                        sample["text"] = tok.text_tok.encode(text).astype(np.int64)
                w.write(key, sample)
                n += 1
            batch.clear()

        for key, data, text, src, doc in _iter_part(part):
            try:
                a = decode_audio(data, src)
            except AudioError as e:
                if cfg.on_bad_audio == "fail":
                    raise
                print(f"tokenize_speech: skipped {src}: {e}", file=sys.stderr)
                bad.append({"source": src, "error": str(e)})
                continue
            batch.append((key, a, text, src, doc))
            if len(batch) >= cfg.batch_size:
                flush()
        if batch:
            flush()
    lines = "".join(json.dumps(b) + "\n" for b in bad)
    output_dir(cfg.out_dir).write_text(f"bad_audio.part-{index:05d}.jsonl", lines)
    return n, bad


_TOK = None


def _init(cfg):
    global _TOK
    _TOK = Tokenizer(cfg)


def _work(args):
    cfg, part, index = args
    return index, run_part(_TOK, cfg, part, index)


def tokenize_corpus(cfg: TokenizeConfig, worker: int = 0, n_workers: int = 1) -> dict:
    """Tokenize this job-array worker's parts (skipping finished ones) with cfg.workers processes;
    when every part is done, merge the manifest. Returns {"samples", "skipped", "bad", "parts", "done"}."""
    parts = plan_parts(cfg.inputs, cfg.files_per_part)
    if not parts:
        raise ValueError("tokenize.inputs: no audio found; pass files, dirs, globs or `audio` shard dirs")
    output_dir(cfg.out_dir).mkdir()  # a local dir, or nothing at an s3:// URL
    mine = [i for i in parts_for_worker(len(parts), worker, n_workers) if not part_done(cfg.out_dir, i)]
    jobs = [(cfg, parts[i], i) for i in mine]
    results = []
    if jobs and cfg.workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(min(cfg.workers, len(jobs)), _init, (cfg,)) as pool:
            results = list(pool.imap_unordered(_work, jobs))
    elif jobs:
        _init(cfg)
        results = [_work(j) for j in jobs]
    done = all(part_done(cfg.out_dir, i) for i in range(len(parts)))
    if done:
        merge_parts(cfg.out_dir, len(parts))
    return {"samples": sum(r[1][0] for r in results), "bad": [b for r in results for b in r[1][1]],
            "parts": len(parts), "skipped_parts": len(parts) - len(mine), "done": done}
