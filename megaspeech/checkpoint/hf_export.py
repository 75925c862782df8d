"""Checkpoint (any TP/PP layout) -> transformers directory: model.safetensors, config.json,
generation_config.json and tokenizer files whose ids are the unified token space (text pieces, then
`<|speech_N|>` per speech code, then the specials)."""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from megaspeech.config.load import check
from megaspeech.config.schema import ModelConfig
from megaspeech.fs import swap_dir
from megaspeech.checkpoint.hf_files import (MARKER, TMP_MARKER, copy_text_tokenizer, remove_stale_exports,  # noqa: F401
                                            write_checksums)
from megaspeech.model.hf import adapter_for
from megaspeech.checkpoint.offline import full_state_dict
from megaspeech.vocab import Vocab

log = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    """launch/export_hf.py and the recipe's `export` stage (configs/hf/export.yaml)."""
    checkpoint: str = ""  # a step dir, a run's checkpoints/ dir or a run dir (both: its `latest`)
    out: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    def __post_init__(self):
        check(bool(self.checkpoint), "checkpoint", "set checkpoint=<step dir | run dir>")
        check(bool(self.out), "out", "set out=<output directory>")


def speech_token(code: int) -> str:
    return f"<|speech_{code}|>"


def sentencepiece_tokenizer(sp_model: str | Path):
    """A transformers fast tokenizer equal to the SentencePiece (unigram) model: same ids, same
    normalization (precompiled charsmap, whitespace folding, dummy prefix), byte fallback."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import import_protobuf
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(Path(sp_model).read_bytes())
    ns, ts = proto.normalizer_spec, proto.trainer_spec
    if ts.model_type != 1:  # 1 = UNIGRAM (the kind launch/train_text_tokenizer.py writes)
        raise NotImplementedError(f"{sp_model}: SentencePiece model type {ts.model_type} is not supported "
                                  f"for export; train a unigram model")
    tok = Tokenizer(models.Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=ts.unk_id,
                                   byte_fallback=ts.byte_fallback))
    norms = [normalizers.Precompiled(ns.precompiled_charsmap)] if ns.precompiled_charsmap else []
    if ns.remove_extra_whitespaces:
        norms += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", split=False,
                                                 prepend_scheme="always" if ns.add_dummy_prefix else "never")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1 if ns.add_dummy_prefix else 0, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def text_pad_token(row: int) -> str:
    return f"<|text_pad_{row}|>"


def unified_tokenizer(vocab: Vocab, hf_source: str | None):
    """The text tokenizer (vocab.sp_model, else vocab.hf_tokenizer, else the tokenizer of the HF model we
    started from) plus speech and special tokens at their unified ids; None when there is no text
    tokenizer. A tokenizer shorter than vocab.text_size (GLM-4: 151,343 tokens, 151,552 embedding rows)
    gets `<|text_pad_N|>` for the padding rows, so speech codes and specials land at their ids."""
    from tokenizers import AddedToken
    hf_source = str(Path(vocab.hf_tokenizer or hf_source).expanduser()) if vocab.hf_tokenizer or hf_source else None
    if vocab.sp_model:
        if not Path(vocab.sp_model).is_file():
            raise FileNotFoundError(f"vocab.sp_model={vocab.sp_model} not found; run from the directory the "
                                    f"config's paths are relative to, or fix the path")
        tok = sentencepiece_tokenizer(vocab.sp_model)
    elif hf_source and (Path(hf_source) / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(hf_source)
    else:
        return None
    if len(tok) > vocab.text_size:
        raise ValueError(f"the text tokenizer has {len(tok)} tokens but vocab.text_size={vocab.text_size}")
    pads = [text_pad_token(i) for i in range(len(tok), vocab.text_size)]
    tok.add_tokens([AddedToken(t, normalized=False, special=True) for t in pads], special_tokens=True)
    tok.add_tokens([AddedToken(speech_token(i), normalized=False) for i in range(vocab.speech_size)])
    tok.add_special_tokens({"additional_special_tokens": list(vocab.specials)}, replace_extra_special_tokens=False)
    tok.bos_token, tok.eos_token, tok.pad_token = "<|bos|>", "<|eos|>", "<|pad|>"
    expect = {speech_token(0): vocab.speech_offset, **{s: vocab.special(s) for s in vocab.specials}}
    if pads:  # fewer text pieces than embedding rows
        expect.update({pads[0]: vocab.text_size - len(pads), pads[-1]: vocab.text_size - 1})
    if vocab.speech_size:
        expect[speech_token(vocab.speech_size - 1)] = vocab.special_offset - 1
    got = {t: tok.convert_tokens_to_ids(t) for t in expect}
    if got != expect:
        raise ValueError(f"tokenizer ids {got} differ from the unified layout {expect}: a speech/special "
                         f"token name already exists in the text tokenizer")
    return tok


# MARKER: written into every export: only such a directory is ever replaced (megaspeech/checkpoint/hf_files.py)


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_export_target(out_dir: str | Path, ckpt_dir: str | Path | None = None) -> None:
    """Refuse an `out` that export would damage: equal to or inside the checkpoint or its run
    directory, holding the checkpoint, or non-empty without the marker of a previous export."""
    out = Path(out_dir).expanduser().resolve()
    if ckpt_dir is not None:
        ck = Path(ckpt_dir).expanduser().resolve()
        run = ck.parent.parent if ck.parent.name == "checkpoints" else ck.parent
        for what, d in (("the checkpoint", ck), ("its run directory", run)):
            if _inside(out, d):
                raise ValueError(f"out={out} is inside {what} {d}; export to a directory outside the run")
        if _inside(ck, out):
            raise ValueError(f"out={out} contains the checkpoint {ck}; replacing it would delete the checkpoint: "
                             f"export to another directory")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={out} is a file, not a directory; pass a new directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ValueError(f"out={out} is not empty and is not a previous export (no {MARKER} file): megaspeech "
                         f"never replaces what it did not write; pass a new or empty directory")


def export_hf(ckpt_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write a transformers directory for the checkpoint at `ckpt_dir` (a step directory holding
    meta.json, any TP/PP layout). Returns out_dir. `out_dir` must be new, empty or a previous export
    (replaced atomically), and outside the checkpoint's run."""
    check_export_target(out_dir, ckpt_dir)
    sd, meta = full_state_dict(Path(ckpt_dir))
    cfg = meta["config"]
    return write_hf(sd, ModelConfig(**cfg["model"]), Vocab.from_dict(cfg["vocab"]), out_dir, dtype)


def write_hf(sd: dict[str, torch.Tensor], m: ModelConfig, vocab: Vocab, out_dir: str | Path,
             dtype: str = "float32") -> Path:
    """Our full state dict (global names, [V_pad, H] embeddings) -> transformers directory, written
    into a temp dir and renamed, so it appears complete or not at all. A previous export in
    `out_dir` is replaced only once the new one is complete; anything else there is refused."""
    check_export_target(out_dir)
    from transformers import AutoModelForCausalLM, GenerationConfig
    ad = adapter_for(m)
    hf_sd = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in ad.to_hf(sd).items()}
    rows = hf_sd["model.embed_tokens.weight"].shape[0]
    tokens = {"bos_token_id": vocab.bos_id, "eos_token_id": vocab.eos_id, "pad_token_id": vocab.pad_id}
    config = ad.hf_config(rows, **tokens)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(hf_sd, strict=True, assign=True)
    if m.tie_embeddings:
        model.tie_weights()
    eos = [vocab.eos_id]
    src = str(Path(m.init_from_hf).expanduser()) if m.init_from_hf else None
    if src and (Path(src) / "generation_config.json").is_file():  # keep the source model's stop tokens
        src_eos = GenerationConfig.from_pretrained(src).eos_token_id
        eos += [e for e in (src_eos if isinstance(src_eos, list) else [src_eos]) if e is not None and e not in eos]
    model.generation_config = GenerationConfig(bos_token_id=vocab.bos_id, eos_token_id=eos, pad_token_id=vocab.pad_id)

    out = Path(out_dir).expanduser()
    if out.is_symlink():  # through a link: the export replaces the link's target, the link stays
        out = out.resolve()
    remove_stale_exports(out)  # temp dirs of killed exports (their pid is dead)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        (tmp / TMP_MARKER).write_text(f"{os.getpid()}\n")  # lets the next export remove it if we are killed
        model.save_pretrained(tmp, safe_serialization=True)
        own = copy_text_tokenizer(vocab, tmp)  # the export is self-contained: vocab.json names files inside it
        tok = unified_tokenizer(dataclasses.replace(vocab, sp_model=str(tmp / own.sp_model)) if own.sp_model
                                else vocab, src)
        if tok is not None:
            tok.save_pretrained(tmp)
        else:
            log.warning("no text tokenizer (vocab.sp_model and model.init_from_hf unset): %s has no tokenizer files", out)
        own.save(tmp / "vocab.json")
        (tmp / MARKER).write_text("written by megaspeech.checkpoint.hf_export; this directory may be replaced by the next export\n")
        (tmp / TMP_MARKER).unlink()
        write_checksums(tmp)  # last: size + sha256 of every file, verified wherever the export is read
    except BaseException:  # a failed export leaves nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace_export(tmp, out)


def replace_export(tmp: Path, out: Path) -> Path:
    """Move the complete export `tmp` (holding MARKER) to `out`: a previous export there is moved aside
    and deleted only once replaced; anything else there is refused (checked again: nothing else may
    have appeared meanwhile)."""
    check_export_target(out)
    return swap_dir(tmp, out)
