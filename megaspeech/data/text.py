"""Text <-> token ids in the unified space, through the tokenizer named by the Vocab.

Two kinds, one interface:
  vocab.sp_model      SentencePiece (from-scratch runs; launch/train_text_tokenizer.py). Its ids are the
                      unified text ids [0, vocab.text_size) (trained without its own bos/eos).
  vocab.hf_tokenizer  a Hugging Face tokenizer dir (tokenizer.json), e.g. SmolLM2-135M's for a run
                      that starts from model.init_from_hf: text shards in that LLM's own vocabulary.
bos/eos/speech markers are unified specials after text and speech in both cases.

Word boundaries (for span sampling, megaspeech.synth.spans) come from the tokenizer's offsets:
`encode_words` marks the token that holds the first character of each whitespace-separated word,
so they are right for byte-level BPE ("Ġ"), for SentencePiece ("▁") and after newlines alike.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from megaspeech.vocab import Vocab


def word_starts(text, offsets) -> np.ndarray:
    """(text, [(begin, end)] per token) -> bool [T]: True where a token opens a word.

    `text` is a str (char offsets, Hugging Face) or bytes (byte offsets, SentencePiece). A word
    starts at a non-space unit preceded by whitespace or at the start. The first token whose span
    reaches that unit opens the word; a zero-width token (a byte-fallback piece) counts as one unit
    wide, so the bytes of one character are never split between two words."""
    n = len(text)
    if isinstance(text, (bytes, bytearray)):
        space = np.frombuffer(bytes(text), np.uint8)
        space = np.isin(space, np.frombuffer(b" \t\n\r\x0b\x0c", np.uint8))
    else:
        space = np.fromiter((c.isspace() for c in text), bool, n)
    start = ~space & np.concatenate([[True], space[:-1]]) if n else np.zeros(0, bool)
    cs = np.concatenate([[0], np.cumsum(start)])
    out = np.zeros(len(offsets), bool)
    claimed = 0
    for i, (b, e) in enumerate(offsets):
        b, e = min(b, n), min(max(e, b + 1), n)
        lo = max(b, claimed)
        if e > lo and cs[e] > cs[lo]:
            out[i] = True
        claimed = max(claimed, e)
    if len(out):
        out[0] = True  # a sample may begin mid-word: its first token opens its first word
    return out


class TextTokenizer:
    """encode(str) -> int32 [T] text ids; encode_words(str) -> (ids, word starts);
    decode(ids) -> str (speech codes and specials shown as tags)."""

    def __init__(self, vocab: Vocab, base_dir: str | Path | None = None):
        self.vocab, self.sp, self.hf = vocab, None, None
        if vocab.hf_tokenizer:
            self.path = self._resolve(vocab.hf_tokenizer, base_dir, "vocab.hf_tokenizer")
            self.kind = "hf"
            self.hf = load_hf_tokenizer(self.path)
            n = self.hf.get_vocab_size(with_added_tokens=True)
        elif vocab.sp_model:
            import sentencepiece as spm
            self.path = self._resolve(vocab.sp_model, base_dir, "vocab.sp_model")
            self.kind = "sentencepiece"
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
            n = self.sp.get_piece_size()
        else:
            raise ValueError("the vocab names no text tokenizer: set vocab.sp_model (SentencePiece, written by "
                             "launch/train_text_tokenizer.py) or vocab.hf_tokenizer (a Hugging Face tokenizer dir)")
        if n > vocab.text_size:  # fewer is fine: an LLM's embedding rows past its tokenizer (GLM-4, Qwen2.5)
            raise ValueError(f"{self.path} has {n} tokens but vocab.text_size={vocab.text_size}; "
                             f"set vocab.text_size >= {n} (the LLM's embedding rows)")

    @staticmethod
    def _resolve(p: str, base_dir, field: str) -> Path:
        path = Path(p).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.exists():
            raise FileNotFoundError(f"{field}={p}: {path} not found; run launch/train_text_tokenizer.py "
                                    f"(SentencePiece) or launch/convert_smollm2.py (Hugging Face) or fix the path")
        return path

    @classmethod
    def from_dir(cls, directory: str | Path, speech_size: int | None = None) -> "TextTokenizer":
        """Load `directory/vocab.json` and the tokenizer it names (path relative to the dir), or, for a
        Hugging Face tokenizer dir without vocab.json (e.g. model.init_from_hf's), build the unified
        vocabulary over it with `speech_size` codes. A given speech_size must match vocab.json's."""
        directory = Path(directory).expanduser()
        if (directory / "vocab.json").is_file():
            vocab = Vocab.load(directory / "vocab.json")
            if speech_size is not None and vocab.speech_size != speech_size:
                from megaspeech.vocab import VocabMismatch
                raise VocabMismatch(f"{directory}/vocab.json has speech_size={vocab.speech_size} but {speech_size} "
                                    f"was asked for (the speech tokenizer's codebook): use one vocabulary")
            return cls(vocab, base_dir=directory)
        if (directory / "tokenizer.json").is_file():
            if speech_size is None:
                raise ValueError(f"{directory} is a Hugging Face tokenizer dir without vocab.json: give the speech "
                                 f"vocabulary size (text.speech_size = the speech tokenizer's codebook_size)")
            return cls(hf_vocab(directory, speech_size))
        raise FileNotFoundError(f"{directory}: neither vocab.json (launch/train_text_tokenizer.py) nor tokenizer.json "
                                f"(a Hugging Face tokenizer dir) found")

    def vocab_for(self, out_dir: str | Path) -> Vocab:
        """This vocab with its tokenizer path relative to `out_dir`, for the vocab.json written there."""
        rel = os.path.relpath(Path(self.path).resolve(), Path(out_dir).resolve())
        field = "hf_tokenizer" if self.hf is not None else "sp_model"
        return dataclasses.replace(self.vocab, **{field: rel})

    def encode(self, text: str) -> np.ndarray:
        if self.hf is not None:
            return np.asarray(self.hf.encode(text, add_special_tokens=False).ids, dtype=np.int32)
        return np.asarray(self.sp.encode(text), dtype=np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if self.hf is not None:
            return [np.asarray(e.ids, dtype=np.int32) for e in self.hf.encode_batch(texts, add_special_tokens=False)]
        return [np.asarray(ids, dtype=np.int32) for ids in self.sp.encode(texts)]

    def encode_words(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """-> (int32 [T] ids, bool [T] word starts from the tokenizer's offsets)."""
        if self.hf is not None:
            e = self.hf.encode(text, add_special_tokens=False)
            return np.asarray(e.ids, dtype=np.int32), word_starts(text, e.offsets)
        proto = self.sp.encode(text, out_type="proto")  # offsets in bytes of the original text
        ids = np.fromiter((p.id for p in proto.pieces), np.int32, len(proto.pieces))
        return ids, word_starts(text.encode(), [(p.begin, p.end) for p in proto.pieces])

    def _decode_text(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False) if self.hf is not None else self.sp.decode(ids)

    def decode(self, ids) -> str:
        """Unified ids -> text; runs of speech codes become `<speech:N>`, specials their names."""
        v, out, run = self.vocab, [], []
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        n_speech = 0

        def flush():
            if run:
                out.append(self._decode_text(run))
                run.clear()
        for i in ids:
            if i < v.text_size:
                if n_speech:
                    out.append(f"<speech:{n_speech}>")
                    n_speech = 0
                run.append(i)
                continue
            flush()
            if v.is_speech(i):
                n_speech += 1
            else:
                if n_speech:
                    out.append(f"<speech:{n_speech}>")
                    n_speech = 0
                out.append(v.specials[i - v.special_offset] if i < v.size else f"<unk:{i}>")
        flush()
        if n_speech:
            out.append(f"<speech:{n_speech}>")
        return "".join(out)


def load_hf_tokenizer(path: str | Path):
    """A Hugging Face `tokenizers.Tokenizer` from a dir holding tokenizer.json (or that file)."""
    from tokenizers import Tokenizer
    path = Path(path)
    f = path / "tokenizer.json" if path.is_dir() else path
    if not f.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json (a Hugging Face tokenizer dir, e.g. the dir of "
                                f"model.init_from_hf written by launch/convert_smollm2.py)")
    return Tokenizer.from_file(str(f))


def hf_vocab(tokenizer_dir: str | Path, speech_size: int) -> Vocab:
    """The unified vocabulary over a Hugging Face tokenizer: its ids (added tokens included) are the
    text ids, then `speech_size` codes, then the default specials. In a model dir (config.json beside
    the tokenizer) the text part is the model's embedding rows, `vocab_size`, when it has more rows than
    the tokenizer has tokens (GLM-4: 151,552 rows, 151,343 tokens): the ids model.init_from_hf keeps."""
    import json
    n = load_hf_tokenizer(tokenizer_dir).get_vocab_size(with_added_tokens=True)
    config = Path(tokenizer_dir) / "config.json"
    rows = json.loads(config.read_text()).get("vocab_size") if config.is_file() else None
    return Vocab(text_size=max(n, rows or 0), speech_size=speech_size, hf_tokenizer=str(Path(tokenizer_dir).resolve()))
