"""Evaluating bridge models (task: bridge): greedy transcription through the LM, the CTC head's own
greedy transcription, WER on held-out sets (TTS speech of held-out text; LibriVox real speech), and a
single-process driver that trains one config through the project's Trainer (benchmarks/bridge_asr.py,
benchmarks/lasyn.py)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from megaspeech.bridge.model import BridgeLM, greedy_generate
from megaspeech.speech.asr import wer
from megaspeech.speech.audio import HOP, log_mel

def dataset_items(path: str, limit: int | None = None) -> list[tuple[np.ndarray, str]]:
    from megaspeech.speech.audio import decode_audio
    from megaspeech.bridge.batches import load_utterances
    audio, texts, keys, _ = load_utterances(path, 30.0)
    n = len(audio) if limit is None else min(limit, len(audio))
    return [(decode_audio(audio[i], keys[i]), texts[i]) for i in range(n)]


@torch.no_grad()
def transcribe(model: BridgeLM, codec, items: list[tuple[np.ndarray, str]], prompt: str, batch: int = 4,
               max_new_tokens: int = 48, units=None) -> dict:
    """-> {wer, ctc_wer (None for a conv bridge), length_reduction, hyps, ctc_hyps}: greedy decoding, in percent;
    `units` (bridge_data.CTCUnits) reads the CTC head's labels, by default characters."""
    if units is None:
        from megaspeech.bridge.batches import CTCUnits
        units = CTCUnits("chars", codec, 0)
    from megaspeech.bridge.batches import collate
    model.eval()
    hyps, ctc_hyps, frames, positions = [], [], 0, 0
    for s in range(0, len(items), batch):
        rows = []
        for audio, _ in items[s:s + batch]:
            ids = [codec.bos] + list(codec.encode(prompt))
            rows.append(_speech_row(_mel(audio), ids, [0.0] * len(ids)))
        b = collate(rows, 80, 0)
        out = greedy_generate(model, b, codec.eos, max_new_tokens)
        hyps += [codec.decode(o) for o in out]
        sp, _, h_len = model.speech(b)
        frames, positions = frames + int(h_len.sum()), positions + int(sp.lengths.sum())
        if sp.ctc_logits is not None:
            arg = sp.ctc_logits.argmax(-1)
            ctc_hyps += [units.decode(arg[i, :int(h_len[i])].tolist()) for i in range(arg.shape[0])]
    refs = [t for _, t in items]
    return {"wer": wer(refs, hyps), "ctc_wer": wer(refs, ctc_hyps) if ctc_hyps else None,
            "length_reduction": frames / max(positions, 1), "hyps": hyps, "ctc_hyps": ctc_hyps}


def _mel(audio: np.ndarray) -> np.ndarray:
    f = int(np.ceil(audio.shape[0] / HOP))
    return log_mel(audio, 80, frames=f + f % 2)


def _speech_row(mel: np.ndarray, ids: list[int], mask: list[float]) -> dict:
    return {"mel": mel, "ids": ids, "mask": mask, "ctc": [0], "id": 0, "kind": "asr"}


@torch.no_grad()
def speech_gain(model: BridgeLM, codec, items: list[tuple[np.ndarray, str]], prompt: str, max_text_tokens: int,
                batch: int = 4) -> dict:
    """Does the LM use the speech? Teacher-forced transcript loss (nats per token, the training rows'
    layout) with each utterance's own speech (`loss_matched`) and with the next utterance's speech
    (`loss_mismatched`, the same transcripts): `speech_gain` = mismatched - matched is > 0 only when
    the speech tells the LM something about its own words (a prior-only LM scores both alike);
    `speech_gain_se` is its standard error over utterances (paired: the same transcript in both)."""
    from megaspeech.bridge.batches import collate, text_row
    model.eval()
    n, sums, tokens = len(items), {}, np.zeros(len(items))
    # once per utterance: both passes read them
    mels = [_mel(audio) for audio, _ in items]
    texts = [text_row(codec, prompt, text, max_text_tokens) for _, text in items]
    for name, shift in (("matched", 0), ("mismatched", 1)):
        per_utt = []  # summed loss of each utterance's transcript
        for s in range(0, n, batch):
            rows = [_speech_row(mels[(i + shift) % n], *texts[i])
                    for i in range(s, min(s + batch, n))]
            logits, (labels, mask, _), _, _ = model(collate(rows, 80, 0))
            ce = torch.nn.functional.cross_entropy(logits.float().permute(1, 2, 0), labels, reduction="none")
            per_utt += (ce * mask).sum(1).tolist()
            tokens[s:s + len(rows)] = mask.sum(1).numpy()
        sums[name] = np.array(per_utt)
    total = max(float(tokens.sum()), 1.0)
    out = {f"loss_{k}": float(v.sum()) / total for k, v in sums.items()}
    out["speech_gain"] = gain = out["loss_mismatched"] - out["loss_matched"]
    d = sums["mismatched"] - sums["matched"] - gain * tokens  # the ratio estimate's residuals
    out["speech_gain_se"] = float(np.sqrt((d ** 2).sum() * n / max(n - 1, 1))) / total
    return out


def start_single_process() -> object:
    """Process groups for in-process training (world size 1, gloo on CPU); returns the Layout."""
    from megaspeech.parallel.state import init_distributed
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(k, v)
    return init_distributed(1, 1)


def ensure_smollm2(cfg) -> None:
    """Convert SmolLM2-135M-Instruct once (launch/convert_smollm2.py's function) when the config's LM or text
    tokenizer is its default directory and that is not there yet (a fresh machine)."""
    from megaspeech.model.smollm2 import default_dir, smollm2_dir
    wanted = {str(Path(p).expanduser()) for p in (cfg.model.init_from_hf, cfg.bridge.text_tokenizer) if p}
    if str(default_dir()) in wanted:
        smollm2_dir()


def train_config(cfg, layout) -> tuple[BridgeLM, dict]:
    """Train `cfg` (task: bridge) with the project's Trainer in this process (resuming its run.dir's
    checkpoint, if any) -> (model, summary): time in steps and this call's wall time, trained
    parameters, LM positions per second, last losses."""
    from megaspeech.bridge.task import BridgeTask
    from megaspeech.train.trainer import Trainer
    ensure_smollm2(cfg)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, layout, BridgeTask(cfg, layout))
    trainer.fit()
    if trainer.step < cfg.train.steps:  # SIGTERM/SIGUSR1 save and return (the Slurm requeue path)
        raise SystemExit(f"{cfg.run.dir}: training stopped at step {trainer.step} of {cfg.train.steps} "
                         f"(a signal); nothing of this variant is reported; rerun the benchmark")
    wall = time.perf_counter() - t0
    model = trainer.engine.module
    by_step = {}  # a resumed run logs the steps after its checkpoint again: the last of each counts
    for x in (Path(cfg.run.dir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(x)
        by_step[r["step"]] = r
    recs = [by_step[k] for k in sorted(by_step)]
    steady = recs[1:] or recs  # the first step includes loader warm-up
    return model, {
        "train_s": sum(r["step_time_s"] for r in recs), "wall_s": wall, "steps": len(recs),
        "trained_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "lm_tokens_per_s": sum(r["lm_positions"] for r in steady) / sum(r["step_time_s"] for r in steady),
        # over the steps with speech positions (none: an untrained CTC head that predicts only blanks)
        "train_length_reduction": _mean([r["length_reduction"] for r in recs]),
        "final_loss": float(np.mean([r["loss"] for r in recs[-5:]])),
        "final_loss_ctc": _mean([r["loss_ctc"] for r in recs[-5:]]),
    }


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def bench_overrides(train: Path, steps: int, micro: int, interval: int = 50) -> list[str]:
    """The benchmarks' training overrides: data, `steps` x `micro` rows, a checkpoint every `interval`
    steps (the last one kept) that a stopped benchmark resumes (run_variant gives each config its dir)."""
    return [f"bridge.train={train}", "run.resume=auto", f"train.steps={steps}", f"train.micro_batch={micro}",
            f"train.global_batch={micro}", f"checkpoint.interval={interval}", "checkpoint.keep=1",
            "checkpoint.save_at_end=false", "train.progress_bar=false"]


def variant_key(cfg, evals: dict[str, list[tuple[np.ndarray, str]]]) -> str:
    """sha256 of what a variant trains and is measured on: the resolved config less where it runs, saves
    and resumes from (run.dir, run.resume, checkpoint, train.progress_bar), the LaSyn synthesizer's bytes
    and the held-out sets' transcripts."""
    import hashlib

    from megaspeech.config.load import to_dict
    synth = hashlib.sha256(Path(cfg.bridge.lasyn).expanduser().read_bytes()).hexdigest() if cfg.bridge.lasyn else ""
    resolved = to_dict(cfg)
    resolved["run"].pop("dir"), resolved["run"].pop("resume"), resolved.pop("checkpoint")
    resolved["train"].pop("progress_bar")
    return hashlib.sha256(json.dumps([resolved, synth, {k: [t for _, t in v] for k, v in evals.items()}],
                                     sort_keys=True, default=str).encode()).hexdigest()


def run_variant(name: str, cfg, out: Path, layout, evals: dict[str, list[tuple[np.ndarray, str]]],
                fresh: bool = False, cache: Path | None = None) -> dict:
    """Train `cfg` (task: bridge) and transcribe each held-out set of `evals` -> the summary of
    train_config plus, per set S: wer_S (LM greedy), ctc_wer_S (CTC head greedy), length_reduction_S,
    example_S, loss_matched_S / loss_mismatched_S / speech_gain_S (`speech_gain`); every hypothesis
    too. Kept in out/name/result.json (and cache/<hash>.json) under `variant_key`: a rerun with the same
    config and sets, or another benchmark's variant that is the same run (cache), reuses it; fresh=True
    retrains."""
    from megaspeech.fs import write_atomic
    from megaspeech.bridge.batches import ctc_units_for
    key = variant_key(cfg, evals)
    path, shared = out / name / "result.json", (cache / f"{key}.json" if cache else None)
    wanted = [f"{m}_{s}" for s in evals for m in ("wer", "speech_gain", "speech_gain_se")]
    for p in (path, shared):
        if not fresh and p is not None and p.is_file():
            old = json.loads(p.read_text())
            if old.get("key") == key and all(k in old["summary"] for k in wanted):
                print(f"{name}: reusing {p} (same config and held-out sets; --fresh retrains)", flush=True)
                return old["summary"]
    # a result without every figure of this evaluation is measured again: from the run's last checkpoint
    # when it is still there (a finished run resumes at its last step), else by training again
    cfg.run.dir = str(out / name / f"run-{key[:12]}")  # this config's own dir: run.resume=auto resumes only it
    model, summ = train_config(cfg, layout)
    units = ctc_units_for(cfg.bridge, cfg.vocab)
    t0 = time.perf_counter()
    hyps = {}
    for set_name, items in evals.items():
        r = transcribe(model, units.codec, items, cfg.bridge.asr_prompt, units=units)
        summ |= {f"wer_{set_name}": r["wer"], f"ctc_wer_{set_name}": r["ctc_wer"],
                 f"length_reduction_{set_name}": r["length_reduction"], f"example_{set_name}": r["hyps"][0][:80]}
        hyps[set_name] = {"lm": r["hyps"], "ctc": r["ctc_hyps"]}
        g = speech_gain(model, units.codec, items, cfg.bridge.asr_prompt, cfg.bridge.max_text_tokens)
        summ |= {f"{k}_{set_name}": v for k, v in g.items()}
    summ["eval_s"] = time.perf_counter() - t0
    for p in (path, shared):
        if p is not None:
            p.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(p, json.dumps({"key": key, "variant": name, "summary": summ, "hyps": hyps}, indent=1))
    return summ

