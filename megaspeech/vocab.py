"""The unified token space: text ids, then speech codes, then special tokens.

    [0, text_size)                               SentencePiece text tokens
    [speech_offset, speech_offset + speech_size) speech codes 0..speech_size-1
    [special_offset, special_offset + n_special) specials, in `specials` order

One `Vocab` is saved as `vocab.json` beside every dataset and checkpoint; `check_same` makes
loading data or weights built with another layout fail with the differing field named.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from megaspeech.errors import check
from megaspeech.fs import write_atomic

DEFAULT_SPECIALS = (
    "<|pad|>", "<|bos|>", "<|eos|>", "<|begin_of_speech|>", "<|end_of_speech|>",
    "<|user|>", "<|assistant|>", "<|system|>",
)


class VocabMismatch(ValueError):
    pass


@dataclass
class Vocab:
    text_size: int = 32000
    speech_size: int = 16384
    specials: list[str] = field(default_factory=lambda: list(DEFAULT_SPECIALS))
    sp_model: str | None = None  # path to the SentencePiece model (None for synthetic/demo layouts)
    # Hugging Face tokenizer dir (tokenizer.json) whose ids are the text ids [0, text_size), e.g. the
    # tokenizer of model.init_from_hf; set instead of sp_model for runs that start from an HF LLM
    hf_tokenizer: str | None = None

    def __post_init__(self):
        check(self.text_size > 0, "vocab.text_size", f"must be > 0, got {self.text_size}")
        check(self.speech_size >= 0, "vocab.speech_size", f"must be >= 0, got {self.speech_size}")
        check(len(set(self.specials)) == len(self.specials), "vocab.specials", "names must be unique")
        check(not (self.sp_model and self.hf_tokenizer), "vocab.hf_tokenizer",
              "set either vocab.sp_model (SentencePiece) or vocab.hf_tokenizer (Hugging Face), not both")
        for name in ("<|pad|>", "<|bos|>", "<|eos|>", "<|begin_of_speech|>", "<|end_of_speech|>"):
            check(name in self.specials, "vocab.specials", f"must contain {name}")

    # layout ---------------------------------------------------------------------------------
    @property
    def speech_offset(self) -> int:
        return self.text_size

    @property
    def special_offset(self) -> int:
        return self.text_size + self.speech_size

    @property
    def size(self) -> int:
        return self.special_offset + len(self.specials)

    def padded_size(self, multiple: int) -> int:
        return -(-self.size // multiple) * multiple

    def special(self, name: str) -> int:
        try:
            return self.special_offset + self.specials.index(name)
        except ValueError:
            raise KeyError(f"special token {name!r} not in vocab.specials {self.specials}") from None

    @property
    def pad_id(self) -> int:
        return self.special("<|pad|>")

    @property
    def bos_id(self) -> int:
        return self.special("<|bos|>")

    @property
    def eos_id(self) -> int:
        return self.special("<|eos|>")

    @property
    def bos_speech_id(self) -> int:
        return self.special("<|begin_of_speech|>")

    @property
    def eos_speech_id(self) -> int:
        return self.special("<|end_of_speech|>")

    def speech_id(self, code):
        """Speech code(s) -> token id(s); works on ints, numpy arrays and tensors."""
        return code + self.speech_offset

    def is_speech(self, ids):
        return (ids >= self.speech_offset) & (ids < self.special_offset)

    # persistence ----------------------------------------------------------------------------
    def layout(self) -> dict:
        """The fields that define token ids (the model file path is not one of them)."""
        return {"text_size": self.text_size, "speech_size": self.speech_size, "specials": list(self.specials)}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        return cls(**{k: d[k] for k in ("text_size", "speech_size", "specials", "sp_model", "hf_tokenizer") if k in d})

    def save(self, path: str | Path) -> None:
        write_atomic(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        """Read vocab.json. A relative `sp_model` / `hf_tokenizer` in the file is relative to the
        file's own directory (not the working directory), so it is returned resolved against it."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} not found: a vocab.json is written by launch/train_text_tokenizer.py "
                                    f"and beside every dataset and checkpoint") from None
        for k in ("sp_model", "hf_tokenizer"):
            if d.get(k) and not os.path.isabs(os.path.expanduser(d[k])):
                d[k] = os.path.normpath(path.resolve().parent / d[k])
        return cls.from_dict(d)

    def check_same(self, other: "Vocab", where: str) -> None:
        """Raise VocabMismatch naming the first differing layout field."""
        a, b = self.layout(), other.layout()
        for k in a:
            if a[k] != b[k]:
                raise VocabMismatch(
                    f"{where} was built with vocab.{k}={b[k]!r} but this run uses vocab.{k}={a[k]!r}; "
                    f"rebuild it with this vocabulary or set vocab.{k} to match"
                )
