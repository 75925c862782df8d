"""Real text corpora -> `text` shards (the library side of `launch/prepare_data.py text`).

Documents come from `interleave_corpora` in a fixed order, are tokenized with the text tokenizer
of `text.tokenizer` (a dir with vocab.json naming a SentencePiece model or a Hugging Face tokenizer;
or a Hugging Face tokenizer dir itself, e.g. model.init_from_hf's), each sample storing `words`
(token indices where words begin, from the tokenizer's offsets), split into samples of at most `text.max_tokens_per_sample` tokens and
written through `ShardWriter`. Work is split into `text.parts` parts by document index (part =
doc_index % parts); a job-array worker handles `parts_for_worker(...)` and skips finished parts,
and whoever finds every part finished writes the dataset manifest. The temp files a killed run left
(`.part-<i>-*.tar.tmpPID`, and with one worker `.vocab.json.tmpPID`) are removed before parts are redone.
`text.out_dir` may be an fsspec URL (s3://bucket/prefix): ShardWriter stages, uploads and checks each
shard and publishes a manifest only after its shards (megaspeech.data.remote_write).
"""
from __future__ import annotations

import numpy as np

from megaspeech.data.corpora import interleave_corpora
from megaspeech.config.prep import DataPrepConfig
from megaspeech.data.shards import merge_parts, part_prefix, part_writer, parts_for_worker, unfinished_parts
from megaspeech.data.text import TextTokenizer
from megaspeech.fs import is_url, remove_stale_temps, write_atomic
from megaspeech.vocab import Vocab


def split_tokens(ids: np.ndarray, max_len: int) -> list[np.ndarray]:
    """Split [T] ids into ceil(T/max_len) near-equal chunks (no tiny tail chunk)."""
    n = max(1, -(-len(ids) // max_len))
    return np.array_split(ids, n)


def _docs(cfg: DataPrepConfig, tok: TextTokenizer):
    """(doc_index, name, ids) in corpus order; with text.max_tokens each corpus gets an equal share."""
    budget = None if cfg.text.max_tokens is None else cfg.text.max_tokens // len(cfg.corpora)
    used = [0] * len(cfg.corpora)
    for i, (c, name, text) in enumerate(interleave_corpora(cfg.corpora)):
        if budget is not None and used[c] >= budget:
            if min(used) >= budget:
                return
            continue  # still encoded lazily by the corpus reader; only this corpus is full
        ids, starts = tok.encode_words(text)
        if budget is not None:
            ids, starts = ids[:budget - used[c]], starts[:budget - used[c]]
        used[c] += len(ids)
        if len(ids):
            yield i, name, ids, starts


def prepare_text(cfg: DataPrepConfig, log=print) -> dict | None:
    """Write this worker's parts; returns the dataset manifest once all parts are finished."""
    t = cfg.text
    tok = TextTokenizer.from_dir(t.tokenizer, t.speech_size)
    # vocab.json beside the shards names the tokenizer relative to the data dir (at a URL: its local path)
    vocab = tok.vocab if is_url(t.out_dir) else tok.vocab_for(t.out_dir)
    todo = unfinished_parts(t.out_dir, parts_for_worker(t.parts, t.worker, t.num_workers))
    _remove_temps(t.out_dir, todo, t.num_workers, log)
    if todo:
        writers = {p: part_writer(t.out_dir, "text", vocab, p, max_bytes=t.max_shard_bytes,
                                  meta={"corpora": cfg.corpora, "tokenizer": str(tok.path),
                                        "max_tokens_per_sample": t.max_tokens_per_sample}) for p in todo}
        try:
            for i, name, ids, starts in _docs(cfg, tok):
                w = writers.get(i % t.parts)
                if w is None:
                    continue
                pos = 0
                for j, chunk in enumerate(split_tokens(ids, t.max_tokens_per_sample)):
                    # words: token indices where a word begins (tokenizer offsets), for span sampling
                    words = np.flatnonzero(starts[pos:pos + len(chunk)]).astype(np.int32)
                    pos += len(chunk)
                    w.write(f"d{i:07d}_{j:04d}", {"tokens": chunk, "words": words, "source": name, "doc": name})
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        for p, w in writers.items():
            m = w.close()
            log(f"part {p}: {m['samples']} samples, {m['tokens']} tokens in {len(m['shards'])} shards")
    if not unfinished_parts(t.out_dir, range(t.parts)):  # at a URL: one listing, not one per part
        m = merge_parts(t.out_dir, t.parts)
        log(f"{t.out_dir}/manifest.json: {m['samples']} samples, {m['tokens']} tokens, {len(m['shards'])} shards")
        return m
    log("other parts still running; the last worker to finish writes manifest.json")
    return None


def _remove_temps(out_dir, parts: list[int], num_workers: int, log) -> None:
    """Temp files a killed run left: those of the parts this worker is about to redo (no other worker
    writes them) and, when this is the only worker, those of the shared files (vocab.json, manifest)
    whose writer is dead. Only the writers' own `.NAME.tmpPID` names are touched."""
    names = [rf"{part_prefix(p)}(-\d+\.tar|\.manifest\.json)" for p in parts]
    if num_workers == 1:
        names.append(r"vocab\.json|manifest\.json")
    if names:
        gone = remove_stale_temps(out_dir, "|".join(names))
        if gone:
            log(f"removed {len(gone)} temp files of an interrupted run from {out_dir}")


def _lines(corpora: list[str]):
    """Non-empty lines of every document; SentencePiece samples `input_sentence_size` of them."""
    for _, _, text in interleave_corpora(corpora):
        for line in text.splitlines():
            line = line.strip()
            if line:
                yield line


def train_sentencepiece(cfg: DataPrepConfig, log=print) -> Vocab:
    """Train the SentencePiece text tokenizer on cfg.corpora; write tokenizer.model + vocab.json into
    cfg.tokenizer.out_dir (atomic renames). The model has no bos/eos of its own (those are unified
    specials), so its piece ids are exactly the unified text ids [0, vocab_size)."""
    import io
    from pathlib import Path

    import sentencepiece as spm
    t = cfg.tokenizer
    out = Path(t.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(cfg.corpora), model_writer=model, vocab_size=t.vocab_size,
        model_type=t.model_type, character_coverage=t.character_coverage,
        input_sentence_size=t.input_sentence_size, shuffle_input_sentence=True,
        bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, byte_fallback=True,
        num_threads=t.num_threads, minloglevel=2)
    write_atomic(out / "tokenizer.model", model.getvalue())
    vocab = Vocab(text_size=t.vocab_size, speech_size=t.speech_size, sp_model="tokenizer.model")
    vocab.save(out / "vocab.json")
    log(f"wrote {out}/tokenizer.model ({len(model.getvalue())} bytes) and vocab.json "
        f"(text_size={vocab.text_size} speech_size={vocab.speech_size} size={vocab.size})")
    return vocab
