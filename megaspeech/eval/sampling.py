"""One prompt -> the model's continuation, in text or speech, written where a person can hear and see it:
the library of `launch/generate.py` (config: megaspeech/config/generation.py).

The model is a checkpoint of any TP/PP layout or a Hugging Face export (megaspeech.eval.lm.load_lm: both
backends decode through a KV cache with the same prefill / step interface), so a checkpoint and its
export give the same tokens for the same seed. Prompts are rendered as the training samples are
(megaspeech.data.render.prompt, shared with the data tools; GenerateConfig's docstring lists the four
modes); generation is restricted to the output modality's
ids and its end token (text ids + <|eos|>, or speech codes + <|end_of_speech|>).

Speech output is heard through a speech decoder (megaspeech.speech.speech_decoder: codes -> mel ->
16 kHz waveform). Outputs in OUT: codes.npy (raw codes 0..K-1, int64), speech.wav (16-bit PCM, 16 kHz,
codes / frame_rate seconds), mel.png (the decoder's mel spectrogram), generation.json (settings,
the text, counts, timings). With `stream`, the decoder turns each block of `block` codes into audio as
soon as the model has sampled it and the chunk goes to disk at once; the first-audio latency is the
time from the start of generation (prompt prefill included) to the first chunk on disk.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from megaspeech.config.generation import GenerateConfig
from megaspeech.data.render import prompt as render_prompt
from megaspeech.fs import atomic_path, write_atomic
from megaspeech.vocab import Vocab


def output_rows(vocab: Vocab, modality: str) -> tuple[torch.Tensor, int]:
    """Vocabulary rows generation may pick for an output modality ("T" or "S"), the stop token last;
    returns (rows int64 [R], number of stop rows at the end)."""
    v = vocab
    if modality == "T":  # text ids; a new document (<bos>) ends the answer as <eos> does
        return torch.cat([torch.arange(v.text_size), torch.tensor([v.eos_id, v.bos_id])]), 2
    return torch.cat([torch.arange(v.speech_offset, v.speech_offset + v.speech_size),
                      torch.tensor([v.eos_speech_id])]), 1


@torch.no_grad()
def sample_tokens(lm, prompt: np.ndarray, modality: str, cfg: GenerateConfig) -> Iterator[int]:
    """Yield the continuation of `prompt` one vocabulary id at a time (the stop token not included),
    as the model samples it: greedy at cfg.temperature 0, else temperature + top-p from a generator
    seeded with cfg.seed (megaspeech.model.decode.choose, the speech generator's sampler); at most
    cfg.max_new ids, the stop refused before cfg.min_new."""
    from megaspeech.model.decode import choose
    rows, n_stop = output_rows(lm.vocab, modality)
    dec = lm.decoder(rows)
    gen = torch.Generator().manual_seed(cfg.seed)
    logits = dec.prefill([torch.as_tensor(prompt, dtype=torch.long)], cfg.max_new)
    for n in range(cfg.max_new):
        if n < cfg.min_new:
            logits[:, -n_stop:] = float("-inf")
        col = int(choose(logits.float(), cfg, gen)[0])
        if col >= len(rows) - n_stop:
            return
        yield int(rows[col])
        if n + 1 < cfg.max_new:
            logits = dec.step(rows[col].view(1))


def wav_prompt_codes(speech_tokenizer: str, wav: str, vocab: Vocab) -> np.ndarray:
    """A recording -> raw speech codes with the run's tokenizer (its codebook must be vocab.speech_size)."""
    from megaspeech.speech.audio import decode_audio
    from megaspeech.speech.tokenizer import check_speech_vocab, load_tokenizer, tokenize_audios
    if not Path(wav).is_file():
        raise FileNotFoundError(f"wav={wav}: no such file; give a recording (wav/flac/ogg) as the spoken prompt")
    audio = decode_audio(wav)
    check_speech_vocab(vocab.speech_size, "the model", speech_tokenizer)
    model, _, _ = load_tokenizer(speech_tokenizer)
    return tokenize_audios(model, [audio])[0].astype(np.int64)


def load_decoder_for(cfg: GenerateConfig, vocab: Vocab):
    """The speech decoder of cfg; one trained for another codebook than the model's speech codes is refused."""
    from megaspeech.speech.speech_decoder import load_speech_decoder
    if not Path(cfg.speech_decoder).is_dir():
        raise FileNotFoundError(f"speech_decoder={cfg.speech_decoder}: no such directory; train one with "
                                f"launch/train_speech_decoder.py (or the recipe's speech_decoder stage) and "
                                f"pass its dir")
    dec = load_speech_decoder(cfg.speech_decoder, vocoder=cfg.vocoder, codebook_size=vocab.speech_size)
    return dec


def mel_png(mel: np.ndarray, path: Path, frames_per_second: float, title: str) -> None:
    """A log-mel spectrogram float32 [n_mels, F] as a PNG (time in seconds, mel bin), written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 3))
    extent = [0, mel.shape[1] / frames_per_second, 0, mel.shape[0]]
    im = ax.imshow(mel, origin="lower", aspect="auto", extent=extent, cmap="magma")
    ax.set(xlabel="seconds", ylabel="mel bin", title=title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def speak(decoder, codes: Iterator[int], out: Path, stream: bool, block: int, t0: float) -> tuple[np.ndarray, float]:
    """Codes -> OUT/speech.wav (16-bit PCM at decoder.sample_rate). stream: each block of codes is
    decoded and written as it arrives. Returns (raw codes int64 [N], seconds from t0 to the first
    audio on disk; without stream, to the whole file)."""
    import soundfile as sf
    got: list[int] = []

    def tee():
        for c in codes:
            got.append(c)
            yield c
    first = None
    with atomic_path(out / "speech.wav", ".wav") as tmp:
        with sf.SoundFile(tmp, "w", samplerate=decoder.sample_rate, channels=1, subtype="PCM_16") as f:
            if stream:
                for chunk in decoder.stream(tee(), block=block):
                    f.write(np.clip(chunk, -1, 1))
                    f.flush()
                    first = first if first is not None else time.perf_counter() - t0
            else:
                c = np.fromiter(tee(), np.int64)
                f.write(np.clip(decoder.synthesize(c), -1, 1) if len(c) else np.zeros(0, np.float32))
    return np.asarray(got, np.int64), first if first is not None else time.perf_counter() - t0


def save_npy(path: Path, a: np.ndarray) -> None:
    with atomic_path(path, ".npy") as tmp:
        np.save(tmp, a)


def generate(cfg: GenerateConfig, log=print) -> dict:
    """Run cfg's prompt through the model; print the text (text output) or write the speech files
    (speech output) into cfg.out_dir. Returns generation.json's dict. Every input is checked (and the
    speech decoder loaded) before the model generates anything."""
    from megaspeech.data.text import TextTokenizer
    from megaspeech.eval.lm import load_lm
    cfg.check_prompt()
    lm = load_lm(cfg.model)
    v = lm.vocab
    tok = TextTokenizer(v)
    decoder = load_decoder_for(cfg, v) if cfg.mode.endswith("S") else None
    if cfg.text is not None:
        prompt = render_prompt(cfg.mode, v, text_ids=tok.encode(cfg.text))
    else:
        prompt = render_prompt(cfg.mode, v, codes=wav_prompt_codes(cfg.speech_tokenizer, cfg.wav, v))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = {"model": cfg.model, "model_version": lm.version, "backend": lm.kind, "mode": cfg.mode,
           "prompt": cfg.text if cfg.text is not None else cfg.wav, "prompt_tokens": len(prompt),
           "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed, "max_new": cfg.max_new}
    t0 = time.perf_counter()
    ids = sample_tokens(lm, prompt, cfg.mode[-1], cfg)
    if decoder is None:
        toks = np.fromiter(ids, np.int64)
        res.update(text=tok.decode(toks), tokens=len(toks), capped=len(toks) == cfg.max_new)
        log(res["text"])
    else:
        codes, first = speak(decoder, (i - v.speech_offset for i in ids), out, cfg.stream, cfg.block, t0)
        save_npy(out / "codes.npy", codes)
        seconds = len(codes) / decoder.frame_rate
        res.update(codes=len(codes), capped=len(codes) == cfg.max_new, audio_seconds=seconds,
                   sample_rate=decoder.sample_rate, vocoder=cfg.vocoder, stream=cfg.stream,
                   files=["speech.wav", "codes.npy"])
        res["first_audio_s" if cfg.stream else "audio_ready_s"] = first
        if len(codes):
            mel = decoder.codes_to_mel(codes)
            mel_png(mel, out / "mel.png", mel.shape[1] / seconds, f"{cfg.mode}: {res['prompt']}"[:80])
            res["files"].append("mel.png")
        log(f"{len(codes)} codes = {seconds:.2f} s of speech -> {out / 'speech.wav'}"
            + (f"; first audio after {first:.3f} s (blocks of {cfg.block} codes)" if cfg.stream else ""))
    res["wall_s"] = time.perf_counter() - t0
    write_atomic(out / "generation.json", json.dumps(res, indent=1, default=float))
    return res
