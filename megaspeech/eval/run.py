"""Run an evaluation suite on one model: `evaluate(suite_cfg, model_path, out_dir) -> dict`.

The scoring rule (fixed, the same for every two-choice task and direction, as slamkit/ZeroSpeech do):
each candidate continuation is scored by its mean per-token negative log-likelihood given the prompt
(`scoring: sum` uses the summed NLL instead); the candidate with the lower score is the model's
choice; an exact tie counts 0.5. Continuations include their span markers (a spoken candidate is
`<|begin_of_speech|> codes <|end_of_speech|>`, the interleaved-data format).

Prompts are training documents cut where the model goes on (megaspeech.eval.prompts, built on
megaspeech.data.render, the layouts packing gives shard samples; tested equal to them):
  story / word      one document per candidate (T->T text, S->T / T->S interleaved, S->S one utterance
                    of the whole story read by one voice); prompt = the shared part | continuations
  passage QA        <|bos|> <|user|> passage question <|assistant|>  -> greedy text until <|eos|>
                    (S->T: the passage spoken, the question written: the QA shards' format)
  knowledge QA      <|bos|> <|user|> question <|assistant|>  (S->T: the question spoken; eval.knowledge_qa)
  asr               <|begin_of_speech|> codes <|end_of_speech|>   -> greedy text until <|eos|>
  tts               <|bos|> text <|begin_of_speech|>              -> codes (SpeechGenerator's greedy length rule)
                    heard: codes -> speech_decoder -> waveform -> Whisper tiny.en (eval.tts_audio); read
                    by the speech tokenizer's own decoder only in the diagnostic row
Every spoken part of one item is read by one voice (eval.speech.SpeechCodes.voice_for(item id)).
Directions X->Y: X is the modality of the prompt (context / passage), Y of the candidates or answer.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from megaspeech.data.render import prompt as render_prompt
from megaspeech.data.text import TextTokenizer
from megaspeech.eval import tasks
from megaspeech.config.eval_suite import SuiteConfig
from megaspeech.eval.compare import compare_markdown, compare_rows
from megaspeech.eval.contamination import check_not_in_training, heldout_documents
from megaspeech.eval.heldout_loss import validation_loss
from megaspeech.eval.knowledge_qa import answers, knowledge_task
from megaspeech.eval.prompts import qa_prompt, spoken_texts, two_choice_prompt
from megaspeech.eval.ngram_overlap import overlap_check, overlap_row
from megaspeech.eval.lm import choice_loglikelihoods, greedy, load_lm
from megaspeech.eval.scores import accuracy, em_f1, markdown, mean_ci, proportion, wer_result
from megaspeech.fs import write_atomic


class Context:
    """What every task needs: the model, tokenizers and the span builder."""

    def __init__(self, suite: SuiteConfig, lm, out: Path):
        self.suite, self.lm, self.v, self.out = suite, lm, lm.vocab, out
        sp = suite.text_tokenizer or self.v.sp_model
        self.tok = TextTokenizer(dataclasses.replace(self.v, sp_model=sp))
        self.speech = None
        if suite.speech_tokenizer:
            from megaspeech.eval.speech import SpeechCodes
            self.speech = SpeechCodes(suite.speech_tokenizer, suite.voices, suite.speech_cache or out)
            k = json.loads((Path(suite.speech_tokenizer) / "tokenizer.json").read_text())["codebook_size"]
            if k != self.v.speech_size:
                raise ValueError(f"speech_tokenizer {suite.speech_tokenizer} has {k} codes but the model's "
                                 f"vocab.speech_size is {self.v.speech_size}; use the tokenizer the model was trained with")
        self._codes: dict[tuple[str, str], np.ndarray] = {}

    def need_speech(self, requests: list[tuple[str, str]]) -> None:
        """Synthesize and tokenize (text, voice) pairs (cached)."""
        self._codes.update(self.speech.codes(requests))

    def voice(self, item: dict) -> str:
        """The one voice that reads every spoken part of an item."""
        return self.speech.voice_for(item["id"])

    def speak(self, text: str, item: dict) -> np.ndarray:
        """Raw codes of `text` read by the item's voice (after need_speech)."""
        return self._codes[(text, self.voice(item))]

    def span(self, text: str) -> np.ndarray:
        """The speech span of a lone sentence (ASR), read by the voice of its text."""
        from megaspeech.data.render import speech_span
        return speech_span(self._codes[(text, self.speech.voice_for(text))], self.v)


def two_choice(ctx: Context, items: list[dict], direction: str) -> dict:
    """Accuracy of preferring endings[label] under the scoring rule, batched over all candidates."""
    if "S" in direction:
        ctx.need_speech([(t, ctx.voice(it)) for it in items for t in spoken_texts(it, direction)])
    t0 = time.perf_counter()
    built = [two_choice_prompt(it, direction, ctx.v, ctx.tok, lambda t, it=it: ctx.speak(t, it)) for it in items]
    ll, n = choice_loglikelihoods(ctx.lm, [p for p, _ in built], [c for _, c in built], ctx.suite.batch_size)
    nll = -ll / n if ctx.suite.scoring == "mean" else -ll
    label = np.array([it["label"] for it in items])
    right, wrong = nll[np.arange(len(items)), label], nll[np.arange(len(items)), 1 - label]
    scores = np.where(right < wrong, 1.0, np.where(right == wrong, 0.5, 0.0))
    return {**accuracy(scores), "items_per_s": len(items) / (time.perf_counter() - t0)}


def qa(ctx: Context, items: list[dict], direction: str) -> tuple[list[dict], list[str]]:
    """Passage QA: S->T speaks the passage and writes the question (the QA shards' format), T->T writes both."""
    src = direction.split("->")[0]
    if src == "S":
        ctx.need_speech([(it["passage"], ctx.voice(it)) for it in items])
    t0 = time.perf_counter()
    prompts = [qa_prompt(ctx.v, ctx.tok, src, it["question"], it["passage"], lambda t, it=it: ctx.speak(t, it),
                         ctx.suite.qa_prompt) for it in items]
    preds = answers(ctx, prompts)
    em, f1 = np.array([em_f1(p, it["answer"]) for p, it in zip(preds, items)]).T
    ips = len(items) / (time.perf_counter() - t0)
    return [{**proportion(em, "exact match"), "items_per_s": ips},
            {**mean_ci(f1, "token F1"), "items_per_s": ips}], preds


def asr(ctx: Context, items: list[dict]) -> tuple[dict, list[str]]:
    from megaspeech.speech.asr import word_errors
    refs = [it["text"] for it in items]
    ctx.need_speech([(r, ctx.speech.voice_for(r)) for r in refs])
    t0 = time.perf_counter()
    v = ctx.v
    prompts = [ctx.span(r) for r in refs]
    cap = 3 * max(len(r.split()) for r in refs) + 8  # ~1.3 text tokens per word; cap well above
    outs = greedy(ctx.lm, prompts, cap, [v.eos_id, v.bos_id], allowed=torch.arange(v.text_size),
                  batch_size=ctx.suite.batch_size)
    hyps = [ctx.tok.decode(o).strip() for o in outs]
    errs = np.array([word_errors(r, h) for r, h in zip(refs, hyps)])
    return {**wer_result(errs[:, 0], errs[:, 1], ctx.suite.seed), "items_per_s": len(refs) / (time.perf_counter() - t0)}, hyps


class GreedySpeech:
    """Text -> speech codes on either backend: synth.generate.SpeechGenerator's greedy rule (speech
    codes and <|end_of_speech|> only, the end refused before and forced at the length limits of
    GenerationConfig) through eval.lm.greedy's KV cache; the SpeechGenerator.generate protocol."""

    def __init__(self, lm, batch_size: int):
        from megaspeech.synth.generate import GenerationConfig
        self.lm, self.batch_size, self.cfg = lm, batch_size, GenerationConfig()

    def generate(self, texts: list[np.ndarray], n_words: list[int]) -> list[np.ndarray]:
        v = self.lm.vocab
        lims = [self.cfg.length_limits(w) for w in n_words]
        prompts = [render_prompt("T->S", v, text_ids=t) for t in texts]  # a TTS pair cut before its codes
        codes = greedy(self.lm, prompts, [hi for _, hi in lims], [v.eos_speech_id],
                       allowed=torch.arange(v.speech_offset, v.speech_offset + v.speech_size),
                       batch_size=self.batch_size, min_new=[lo for lo, _ in lims])
        return [c - v.speech_offset for c in codes]


TTS_READER = "TTS (tokenizer reader, diagnostic)"


def tts(ctx: Context, items: list[dict], rows: Rows, note: str) -> dict:
    """The TTS rows on one set of generated codes (GreedySpeech): "TTS" hears them as audio (speech
    decoder -> waveform -> the unmodified Whisper tiny.en, megaspeech.eval.tts_audio); the diagnostic
    row reads them with the speech tokenizer's own Whisper decoder, trained with the codes (no audio;
    synth.text_to_token_eval.read_codes). WER per utterance, bootstrap interval (wer_result) in both.
    A row that cannot run says why. Returns the examples {"tts": [(ref, hyp)], "tts reader": ...}."""
    from megaspeech.eval.tts_audio import NO_DECODER, audio_wer
    from megaspeech.speech.asr import word_errors
    from megaspeech.synth.text_to_token_eval import read_codes
    refs, examples = [it["text"] for it in items], {}
    if not ctx.suite.speech_decoder and ctx.speech is None:  # nothing to judge the codes with: none made
        rows.add("TTS", "T->S", {"metric": "WER", "skipped": NO_DECODER})
        rows.add(TTS_READER, "T->S", {"metric": "WER", "skipped": NO_SPEECH})
        return examples
    t0 = time.perf_counter()
    codes = GreedySpeech(ctx.lm, ctx.suite.batch_size).generate([ctx.tok.encode(r) for r in refs],
                                                                [max(1, len(r.split())) for r in refs])
    gen_s = time.perf_counter() - t0
    if ctx.suite.speech_decoder:
        t1 = time.perf_counter()
        res, hyps = audio_wer(ctx.suite.speech_decoder, codes, refs, ctx.suite.seed, speech_size=ctx.v.speech_size)
        rows.add("TTS", "T->S", {**res, "items_per_s": len(refs) / (gen_s + time.perf_counter() - t1)}, note)
        examples["tts"] = list(zip(refs[:5], hyps[:5]))
    else:
        rows.add("TTS", "T->S", {"metric": "WER", "skipped": NO_DECODER})
    if ctx.speech is None:
        rows.add(TTS_READER, "T->S", {"metric": "WER", "skipped": NO_SPEECH})
        return examples
    from megaspeech.speech.tokenizer import tokenizer_format
    if tokenizer_format(Path(ctx.suite.speech_tokenizer)) == "glm4voice":
        rows.add(TTS_READER, "T->S", {"metric": "WER", "skipped": "GLM-4-Voice's released tokenizer has no reader of its codes"})
        return examples
    t1 = time.perf_counter()
    hyps = read_codes(ctx.suite.speech_tokenizer, codes, refs)
    errs = np.array([word_errors(r, h) for r, h in zip(refs, hyps)])
    rows.add(TTS_READER, "T->S", {**wer_result(errs[:, 0], errs[:, 1], ctx.suite.seed),
                                  "items_per_s": len(refs) / (gen_s + time.perf_counter() - t1)}, note)
    examples["tts reader"] = list(zip(refs[:5], hyps[:5]))
    return examples


NO_SPEECH = "no speech_tokenizer set (spoken items need one)"


class Rows:
    """The suite's result rows: every requested (task, direction, metric) appears, as a value or as
    {"skipped": reason}; `note` records a substitution or fewer items than asked."""

    def __init__(self, ctx: Context, log):
        self.ctx, self.log, self.rows = ctx, log, []

    def add(self, task: str, direction: str, res: dict, note: str = "") -> None:
        self.rows.append({"task": task, "direction": direction, **res, **({"note": note} if note else {})})
        if "value" in res:
            self.log(f"{task} {direction}: {res['metric']} {res['value']:.1f} (n={res['n']})"
                     + (f" [{note}]" if note else ""))
        else:
            self.log(f"{task} {direction}: skipped: {res['skipped']}")

    def runnable(self, task: str, directions: list[str], metrics: tuple[str, ...]) -> list[str]:
        """The directions that can run; the others are added as skipped rows (one per metric)."""
        can = [d for d in directions if "S" not in d or self.ctx.speech is not None]
        for d in directions:
            if d not in can:
                for m in metrics:
                    self.add(task, d, {"metric": m, "skipped": NO_SPEECH})
        return can


def short(built: int, asked: int) -> str:
    return f"{built} of {asked} requested items could be built" if built < asked else ""


def two_choice_tasks(ctx: Context, docs, items: dict, rows: Rows) -> None:
    suite = ctx.suite
    if suite.story_items:
        for hard in (False, True):
            name = "story (hard: same document)" if hard else "story (easy: other document)"
            items[name] = tasks.story_items(docs, suite.story_items, suite.story_context, suite.seed, hard)
            for d in rows.runnable(name, suite.story_directions, ("accuracy",)):
                rows.add(name, d, two_choice(ctx, items[name], d), short(len(items[name]), suite.story_items))
    if suite.word_items:
        lexicon = tasks.tokenizer_words(ctx.tok) | tasks.dictionary_words(suite.dictionary)
        items["word"] = tasks.word_items(docs, suite.word_items, suite.seed, lexicon,
                                         n_pieces=lambda w: len(ctx.tok.encode(w)))
        for d in rows.runnable("word vs non-word", suite.word_directions, ("accuracy",)):
            rows.add("word vs non-word", d, two_choice(ctx, items["word"], d), short(len(items["word"]), suite.word_items))


PASSAGE_QA = "passage QA (extractive)"  # a question about a 2-sentence passage it was given: near a copy task


def qa_task(ctx: Context, docs, items: dict, examples: dict, rows: Rows) -> None:
    suite = ctx.suite
    writer = None
    if suite.qa_writer != "template":
        from megaspeech.synth.speech_qa import LMQuestionWriter, QAConfig
        writer = LMQuestionWriter(QAConfig(generator="lm", lm=suite.qa_writer, pairs_per_context=1, seed=suite.seed))
    items["qa"] = tasks.qa_items(docs, suite.qa_items, suite.qa_context, suite.seed, writer)
    notes = [short(len(items["qa"]), suite.qa_items)]
    if writer is not None:  # qa_items asks the writer for half; template questions fill what it missed
        want, got = suite.qa_items // 2, sum(it["writer"] == "lm" for it in items["qa"])
        notes.append(f"{want - got} of {want} {suite.qa_writer} questions replaced by template ones" if got < want
                     else f"{got} questions written by {suite.qa_writer}")
    note = "; ".join(x for x in notes if x)
    for d in rows.runnable(PASSAGE_QA, suite.qa_directions, ("exact match", "token F1")):
        res, preds = qa(ctx, items["qa"], d)
        for r in res:
            rows.add(PASSAGE_QA, d, r, note)
        examples[f"qa {d}"] = [(it["question"], it["answer"], p) for it, p in zip(items["qa"][:5], preds[:5])]


def speech_tasks(ctx: Context, docs, items: dict, examples: dict, rows: Rows) -> None:
    suite = ctx.suite
    if suite.asr_items and rows.runnable("ASR", ["S->T"], ("WER",)):
        items["asr"] = tasks.sentence_items(docs, suite.asr_items, suite.seed, "asr")
        res, hyps = asr(ctx, items["asr"])
        examples["asr"] = [(it["text"], h) for it, h in zip(items["asr"][:5], hyps[:5])]
        rows.add("ASR", "S->T", res, short(len(items["asr"]), suite.asr_items))
    if suite.tts_items:  # heard through the speech decoder; read by the tokenizer as a diagnostic
        items["tts"] = tasks.sentence_items(docs, suite.tts_items, suite.seed, "tts")
        examples.update(tts(ctx, items["tts"], rows, short(len(items["tts"]), suite.tts_items)))


def heldout_row(suite: SuiteConfig, lm, result: dict, rows: Rows) -> None:
    task = "held-out loss (eval.sources)"
    if not suite.heldout_loss:
        return
    if lm.kind != "checkpoint":
        rows.add(task, "-", {"metric": "nats/token", "skipped": "an export has no eval.sources: needs a checkpoint"})
        return
    hl = validation_loss(lm)
    if hl is None:
        rows.add(task, "-", {"metric": "nats/token", "skipped": "the checkpoint's config has no eval.sources"})
        return
    result["heldout_loss"] = hl
    rows.add(task, "-", {"metric": "nats/token", "value": hl["val_loss"], "n": hl["val_tokens"], "ci95": hl["ci95"]})


def evaluate(suite: SuiteConfig, model_path: str | Path | None = None, out_dir: str | Path | None = None,
             log=print) -> dict:
    """Build the suite's tasks from held-out text, score the model, write OUT/eval.json (every metric,
    item count, 95% CI, the split) and OUT/table.md; returns the eval.json dict. Every requested row
    is in both, as a value or as "skipped: <reason>"."""
    model_path = str(model_path or suite.model)
    if not model_path:
        raise ValueError("no model: pass model=<checkpoint dir | step dir | HF dir>")
    out = Path(out_dir or suite.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_lm(model_path)
    docs = heldout_documents(suite.corpus, suite.heldout_docs)
    provenance = check_not_in_training([n for n, _ in docs], suite.training_manifests)
    overlap = overlap_check(suite, docs)  # the text n-gram check; fatal only above its threshold
    ctx = Context(suite, lm, out)
    rows, examples, items = Rows(ctx, log), {}, {}
    two_choice_tasks(ctx, docs, items, rows)
    if suite.qa_items:
        qa_task(ctx, docs, items, examples, rows)
    if suite.knowledge_qa_items:
        knowledge_task(ctx, items, examples, rows)
    speech_tasks(ctx, docs, items, examples, rows)
    result = {"suite": suite.name, "model": model_path, "model_version": lm.version, "backend": lm.kind,
              "scoring": suite.scoring, "results": rows.rows, "examples": examples,
              "split": {"corpus": suite.corpus, "heldout_docs": [n for n, _ in docs],
                        "checked_against": list(suite.training_manifests), "training_docs": provenance},
              "contamination": overlap,
              "items": {k: len(v) for k, v in items.items()}, "config": dataclasses.asdict(suite),
              "qa_writers": {w: sum(it["writer"] == w for it in items.get("qa", [])) for w in ("template", "lm")}}
    heldout_row(suite, lm, result, rows)
    rows.add(*overlap_row(overlap, suite.contamination_ngram))
    if suite.baseline:  # the same items on the baseline (the untrained start model): side by side, difference
        base = evaluate(dataclasses.replace(suite, baseline=None, speech_cache=suite.speech_cache or str(out)),
                        suite.baseline, out / "baseline", log)
        versus = compare_rows(rows.rows, base["results"])
        result["versus_baseline"] = {"baseline": suite.baseline, "rows": versus}
        write_atomic(out / "compare.md", compare_markdown(versus, "model", "baseline") + "\n")
    write_atomic(out / "eval.json", json.dumps(result, indent=1, default=float))
    table = markdown(rows.rows)
    write_atomic(out / "table.md", table + "\n")
    result["table"] = table
    return result
