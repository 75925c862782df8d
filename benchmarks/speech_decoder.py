"""Resynthesis through the speech decoder, judged by an independent ASR (Whisper tiny.en, unmodified).

For every held-out utterance, in the same run:
  original       the audio itself -> ASR (the reference WER of the set)
  resynth        audio -> tokenizer codes -> code->mel -> trained vocoder -> ASR
  resynth_gl     the same predicted mel -> Griffin-Lim (no trained vocoder)
  vocoder_true   the TRUE log-mel of the audio -> trained vocoder (the vocoder stage alone)
  vocoder_net    the TRUE log-mel -> the vocoder's network alone (vocoder.refine_iters 0: no consistency
                 projections; the same as vocoder_true for a decoder trained with refine_iters 0)
  gl_true        the TRUE log-mel -> Griffin-Lim (the no-training ceiling of the vocoder stage)
  vocoder_mag_true_phase  the vocoder network's magnitude from the TRUE log-mel with the audio's own STFT
                 phase (a diagnostic: what the predicted magnitude is worth when the phase is right)
WER (%) with a 95% bootstrap interval over utterances (megaspeech.eval.scores.wer_result), the ratio of
each WER to the original's (paired bootstrap interval), the L1 log-mel distance of each output to the
original's mel (and of the predicted mel itself: the code->mel stage alone), and the real-time factor of
decoding (codes -> waveform seconds per audio second) on one CPU thread. Sets: held-out TTS voices
(`audio` shards, launch/make_speech_corpus.py corpus.split=heldout) and real LibriVox speech
(megaspeech.speech.real_speech; --split test by default). A few .wav examples go to --out/examples.

    python benchmarks/speech_decoder.py --decoder runs/speech_decoder/decoder --heldout runs/tok_corpus/heldout
    python benchmarks/speech_decoder.py --decoder runs/speech_decoder/decoder \
        --decoder runs/speech_decoder_flow/decoder       # regression and flow, measured side by side
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from megaspeech.eval.scores import wer_result
from megaspeech.fs import write_atomic
from megaspeech.speech import audio_shards
from megaspeech.speech.asr import Fallback, transcribe_base, word_errors
from megaspeech.speech.decoder_mel import HOP, istft, log_mel, stft, with_last_frame
from megaspeech.speech.real_speech import librivox
from megaspeech.speech.speech_decoder import SpeechDecoder, load_speech_decoder, read_decoder_meta
from megaspeech.speech.tokenizer import codebook_size, load_tokenizer, tokenize_audios, tokenizer_fingerprint
from megaspeech.speech.whisper_ct2 import load_whisper

CONDITIONS = ("original", "resynth", "resynth_gl", "vocoder_true", "vocoder_net", "gl_true", "vocoder_mag_true_phase")


def ratio_ci(num: np.ndarray, den: np.ndarray, seed: int = 0) -> tuple[float, list[float]]:
    """sum(num) / sum(den) with a paired 95% bootstrap interval over utterances (inf where a resample's
    denominator is 0: the original made no error on it)."""
    idx = np.random.default_rng(seed).integers(0, len(num), (1000, len(num)))
    n, d = num[idx].sum(1), den[idx].sum(1)
    boots = np.where(d > 0, n / np.maximum(d, 1e-12), np.where(n > 0, np.inf, 1.0))
    point = num.sum() / den.sum() if den.sum() > 0 else (np.inf if num.sum() > 0 else 1.0)
    with np.errstate(invalid="ignore"):  # interpolating between two infs: nan, which means inf here
        lo, hi = (float(np.nan_to_num(np.percentile(boots, q), nan=np.inf, posinf=np.inf)) for q in (2.5, 97.5))
    return float(point), [lo, hi]


def magnitude_with_true_phase(dec: SpeechDecoder, true_mel: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """The vocoder's predicted magnitude of the true mel, inverted with the audio's own STFT phase."""
    n = true_mel.shape[1] * HOP
    a = torch.nn.functional.pad(torch.as_tensor(audio, dtype=torch.float32), (0, max(0, n - len(audio))))[:n]
    with torch.no_grad():
        logmag, _ = dec.vocoder.spectrum(torch.as_tensor(true_mel)[None])
    spec = stft(a)
    return istft(with_last_frame(torch.exp(logmag[0])) * spec / spec.abs().clamp_min(1e-12), n).numpy()


def outputs(dec: SpeechDecoder, gl: SpeechDecoder, audio: np.ndarray, codes: np.ndarray) -> dict:
    """The waveforms of one utterance (CONDITIONS), the predicted mel and the decoding seconds (one thread)."""
    n_frames = len(codes) * dec.frames_per_code
    true = log_mel(audio, n_frames).numpy()
    t = time.perf_counter()
    mel = dec.codes_to_mel(codes)
    wave = dec.mel_to_wave(mel)
    t_dec = time.perf_counter() - t
    t = time.perf_counter()
    wave_gl = gl.synthesize(codes)
    t_gl = time.perf_counter() - t
    return {"waves": {"original": audio, "resynth": wave, "resynth_gl": wave_gl,
                      "vocoder_true": dec.mel_to_wave(true),
                      "vocoder_net": dec.mel_to_wave(true, refine_iters=0), "gl_true": gl.mel_to_wave(true),
                      "vocoder_mag_true_phase": magnitude_with_true_phase(dec, true, audio)},
            "true_mel": true, "pred_mel": mel, "t_dec": t_dec, "t_gl": t_gl}


def measure(name: str, items, dec, gl, tok, base, fallback, examples: Path, n_examples: int) -> dict:
    audios, refs = [a for a, _ in items], [t for _, t in items]
    codes = [c for i in range(0, len(audios), 8) for c in tokenize_audios(tok, audios[i:i + 8])]
    errs = {c: [] for c in CONDITIONS}
    words, mel_l1 = [], {c: [] for c in (*CONDITIONS[1:], "pred_mel")}
    secs = t_dec = t_gl = 0.0
    for i, (a, ref, c) in enumerate(zip(audios, refs, codes)):
        o = outputs(dec, gl, a, c)
        secs, t_dec, t_gl = secs + len(a) / 16000, t_dec + o["t_dec"], t_gl + o["t_gl"]
        hyps = transcribe_base(base, [np.asarray(w, np.float32) for w in o["waves"].values()], fallback)
        for cond, h in zip(o["waves"], hyps):
            e, n = word_errors(ref, h)
            errs[cond].append(e)
        words.append(n)
        for cond in mel_l1:
            m = o["pred_mel"] if cond == "pred_mel" else log_mel(o["waves"][cond], o["true_mel"].shape[1]).numpy()
            mel_l1[cond].append(float(np.abs(m - o["true_mel"]).mean()))
        if i < n_examples:
            for cond, w in o["waves"].items():
                sf.write(examples / f"{name}_{i}_{cond}.wav", np.clip(np.asarray(w, np.float32), -1, 1), 16000)
            if i == 0:
                print(f"  [{name}] ref:     {ref}\n  [{name}] resynth: {hyps[1]}", flush=True)
    words_a = np.array(words)
    r = {"utterances": len(items), "audio_s": secs, "wer": {}, "wer_ratio": {}, "mel_l1": {}}
    for cond in CONDITIONS:
        e = np.array(errs[cond])
        r["wer"][cond] = wer_result(e, words_a)
        if cond != "original":
            r["wer_ratio"][cond] = ratio_ci(e, np.array(errs["original"]))
    r["mel_l1"] = {k: float(np.mean(v)) for k, v in mel_l1.items()}
    r["rtf_trained_1thread"], r["rtf_griffin_lim_1thread"] = t_dec / secs, t_gl / secs
    return r


def report(name: str, r: dict) -> None:
    w, ratio = r["wer"], r["wer_ratio"]
    print(f"{name}: n={r['utterances']} audio_s={r['audio_s']:.0f} rtf_trained={r['rtf_trained_1thread']:.3f} "
          f"rtf_griffin_lim={r['rtf_griffin_lim_1thread']:.3f}")
    for c in CONDITIONS:
        ci = w[c]["ci95"]
        extra = (f" ratio={ratio[c][0]:.2f} [{ratio[c][1][0]:.2f}, {ratio[c][1][1]:.2f}] mel_l1={r['mel_l1'][c]:.3f}"
                 if c != "original" else f" pred_mel_l1={r['mel_l1']['pred_mel']:.3f}")
        print(f"  {c:13s} wer={w[c]['value']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]{extra}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoder", action="append", help="decoder dir (RUN_DIR/decoder); repeat to compare several")
    p.add_argument("--tokenizer", help="tokenizer dir; default: the one named in decoder.json")
    p.add_argument("--heldout", default="runs/tok_corpus/heldout", help="held-out TTS `audio` shards")
    p.add_argument("--n_heldout", type=int, default=60)
    p.add_argument("--split", choices=("dev", "test"), default="test", help="LibriVox half (test: reported)")
    p.add_argument("--sets", nargs="+", choices=("heldout_tts", "librivox"), default=["heldout_tts", "librivox"])
    p.add_argument("--examples", type=int, default=3, help=".wav examples written per set")
    p.add_argument("--out", default="runs/speech_decoder_bench", help="results.json and examples/ go here")
    p.add_argument("--greedy", action="store_true", help="greedy ASR only, no temperature fallback")
    a = p.parse_args()
    torch.set_num_threads(1)  # the real-time factor is on one CPU thread
    decoders = a.decoder or ["runs/speech_decoder/decoder"]
    meta = read_decoder_meta(decoders[0])
    tok_dir = a.tokenizer or (meta["tokenizer"] or {}).get("path")
    if not tok_dir:
        sys.exit(f"{decoders[0]}/decoder.json names no tokenizer; pass --tokenizer")
    fp = tokenizer_fingerprint(tok_dir)
    tok, K = load_tokenizer(tok_dir)[0], codebook_size(tok_dir)
    base, fallback = load_whisper(), (None if a.greedy else Fallback())
    read = {"heldout_tts": lambda: audio_shards.transcribed(a.heldout, a.n_heldout), "librivox": lambda: librivox(a.split)}
    sets = {name: read[name]() for name in a.sets}
    out = Path(a.out)
    (out / "examples").mkdir(parents=True, exist_ok=True)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tokenizer": str(tok_dir),
               "command": " ".join(["benchmarks/speech_decoder.py"] + sys.argv[1:]), "decoders": {}}
    for d in decoders:
        dec = load_speech_decoder(d, "trained", codebook_size=K)
        m = read_decoder_meta(d)
        if (m["tokenizer"] or {}).get("fingerprint") not in (None, fp):
            print(f"WARNING: {d} was trained on codes of another tokenizer state than {tok_dir} (fingerprint "
                  f"{m['tokenizer']['fingerprint']} != {fp}): its figures understate it")
        gl = SpeechDecoder(dec.code_to_mel, dec.vocoder, dec.frame_rate, "griffin_lim")
        print(f"decoder={d} objective={m['model']['objective']} steps={(m['trained_on'] or {}).get('steps')} "
              f"tokenizer={tok_dir} frame_rate={dec.frame_rate}", flush=True)
        res = {name: measure(f"{Path(d).parent.name}_{name}", items, dec, gl, tok, base, fallback,
                             out / "examples", a.examples) for name, items in sets.items()}
        for name, r in res.items():
            report(name, r)
        results["decoders"][str(d)] = {"objective": m["model"]["objective"], "trained_on": m["trained_on"],
                                       "sets": res}
    write_atomic(out / "results.json", json.dumps(results, indent=1))
    print(f"wrote {out / 'results.json'} and {out / 'examples'}")


if __name__ == "__main__":
    main()
