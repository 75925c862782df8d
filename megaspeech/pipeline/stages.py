"""The recipe's stages. Each one loads its standalone tool's config (the section's preset + overrides
+ the links below) and calls the same library function as that tool (`launch/<tool>.py`); the
training stages run the tool itself under torch.distributed.run. A stage returns what it wrote
(`outputs`) and what it measured (`metrics`).

Links (all paths under RUN = run.dir, megaspeech.pipeline.layout):
  text           SentencePiece (from scratch) or the HF tokenizer of init_from_hf -> RUN/text/shards
  speech_corpus  TTS of real text -> RUN/speech_corpus/{train,heldout}
  tokenizer      RUN/speech_corpus/train -> RUN/tokenizer/tokenizer (codebook K)
  speech_decoder RUN/speech_corpus/train + the run's speech tokenizer -> RUN/speech_decoder/decoder
  speech_shards  -> RUN/speech_shards/{pairs,unsup,heldout}; pairs/heldout carry text ids in the text vocab
  text_to_token  RUN/speech_shards/pairs -> RUN/text_to_token (checkpoints)
  interleaved    RUN/text/shards + RUN/text_to_token -> RUN/interleaved/shards
  speech_qa      TTS passages + RUN/tokenizer/tokenizer -> RUN/speech_qa/shards (SALM-style QA)
  pretrain       the GLM-4-Voice mixture over RUN -> RUN/pretrain
  export         RUN/pretrain -> RUN/export/hf
  eval           RUN/export/hf on RUN/speech_shards/heldout (+ megaspeech.eval when importable; its TTS
                 row hears the generated codes through RUN/speech_decoder/decoder)
The vocabulary: text ids of the text tokenizer, then K speech codes (K = the tokenizer stage's
codebook_size), then the specials; every stage that reads a vocab.json checks K against the codebook.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import field
from pathlib import Path
from typing import Callable

from megaspeech.checkpoint.hf_export import ExportConfig
from megaspeech.config.load import build
from megaspeech.config.pipeline import StageSection
from megaspeech.pipeline.context import (Ctx, as_dict, codebook_size, file_sha, hf_dir, manifest, speech_tokenizer_dir,
                                         text_vocab, tokenize_schema, tool_config, vocab_links)
from megaspeech.pipeline.layout import MIXTURE_PATHS, preset
from megaspeech.pipeline.progress import eta_line, loss_metrics, train_tool
from megaspeech.synth.interleaved_shards import MakeInterleavedConfig, make_interleaved
from megaspeech.synth.speech_qa_shards import SpeechQAConfig, make_speech_qa


# ---------------------------------------------------------------------------------- stages
def text_configure(ctx: Ctx):
    from megaspeech.config.prep import DataPrepConfig
    k, hf, d = codebook_size(ctx), hf_dir(ctx), ctx.run / "text"
    links = [f"tokenizer.out_dir={d / 'tokenizer'}", f"tokenizer.speech_size={k}", f"text.out_dir={d / 'shards'}",
             f"text.tokenizer={hf or d / 'tokenizer'}", f"text.speech_size={k}"]
    cfg = tool_config(DataPrepConfig, ctx.cfg.text, links)
    extra = {"hf_tokenizer_sha": file_sha(hf / "tokenizer.json")} if hf else {}
    return cfg, extra


def text_run(ctx: Ctx, cfg, extra: dict) -> dict:
    from megaspeech.data.prep_text import prepare_text, train_sentencepiece
    from megaspeech.fs import remove_stale_temps
    tok = Path(cfg.tokenizer.out_dir)
    remove_stale_temps(tok, r"tokenizer\.model|vocab\.json")  # a killed run's (the stage lock is held)
    # from scratch: SentencePiece on the same corpora (launch/train_text_tokenizer.py). A trained
    # tokenizer is part of the stage's finished state (vocab.json is written after tokenizer.model):
    # a resumed run keeps it, so parts finished before an interruption stay in its vocabulary
    if hf_dir(ctx) is None:
        if (tok / "vocab.json").is_file() and (tok / "tokenizer.model").is_file():
            print(f"{tok}: reusing the tokenizer an interrupted run trained", flush=True)
        else:
            train_sentencepiece(cfg)
    m = prepare_text(cfg)
    v = text_vocab(ctx)
    return {"outputs": {"shards": cfg.text.out_dir},
            "metrics": {"samples": m["samples"], "tokens": m["tokens"], "text_size": v.text_size,
                        "speech_size": v.speech_size, "tokenizer": "hf" if v.hf_tokenizer else "sentencepiece"}}


def speech_corpus_configure(ctx: Ctx):
    from megaspeech.speech.corpus import CorpusConfig
    schema = dataclasses.make_dataclass("CorpusTool", [("corpus", CorpusConfig, field(default_factory=CorpusConfig))])
    d = ctx.run / "speech_corpus"
    train = tool_config(schema, ctx.cfg.speech_corpus, [f"corpus.out_dir={d / 'train'}", "corpus.split=train"])
    held = tool_config(schema, ctx.cfg.speech_corpus, [f"corpus.out_dir={d / 'heldout'}", "corpus.split=heldout",
                                                       f"corpus.utterances={ctx.cfg.speech_corpus.heldout_utterances}"])
    return (train, held), {}


def speech_corpus_run(ctx: Ctx, cfgs, extra: dict) -> dict:
    from megaspeech.speech.corpus import build_corpus
    out, metrics = {}, {}
    for cfg in cfgs:
        m = build_corpus(cfg.corpus)
        out[cfg.corpus.split] = cfg.corpus.out_dir
        metrics[f"{cfg.corpus.split}_utterances"] = m["samples"]
    return {"outputs": out, "metrics": metrics}


def tokenizer_configure(ctx: Ctx):
    from megaspeech.speech.tokenizer import tokenizer_fingerprint
    from megaspeech.speech.tokenizer_training import SpeechTokenizerTrainingConfig
    d = ctx.run / "tokenizer"
    cfg = tool_config(SpeechTokenizerTrainingConfig, ctx.cfg.tokenizer, [f"run.dir={d}", f"train.data={ctx.run / 'speech_corpus' / 'train'}"])
    tok = speech_tokenizer_dir(ctx)
    if tok != d / "tokenizer":  # the speech_shards section names a released tokenizer: nothing reads one trained here
        return cfg, {"release": str(tok), "tokenizer_model": tokenizer_fingerprint(tok)}
    return cfg, {}


def _progress_log(ctx: Ctx, stage: str, total: int, max_seconds: float) -> Callable[[str], None]:
    """A trainer's `log`: its lines to the stage log, and its `step=N ...` lines as the console's ETA line."""
    t0, start = time.time(), 0

    def log(line: str):
        nonlocal start
        print(line, flush=True)
        if line.startswith("resumed from "):  # "... at step N": the rate counts only this invocation's steps
            start = int(line.rsplit(" ", 1)[1])
        if line.startswith("step="):
            step = int(line.split()[0].split("=")[1])
            ctx.progress(eta_line(stage, step, total, time.time() - t0, start, max_seconds))
    return log


def tokenizer_run(ctx: Ctx, cfg, extra: dict) -> dict:
    from megaspeech.speech.tokenizer_training import train
    if extra.get("release"):
        print(f"speech_shards names the released tokenizer {extra['release']}: every stage reads its codes, "
              f"so no tokenizer is trained", flush=True)
        return {"outputs": {"tokenizer": extra["release"]}, "metrics": {"trained_steps": 0}}
    last = train(cfg, log=_progress_log(ctx, "tokenizer", cfg.train.steps, cfg.train.max_seconds))
    return {"outputs": {"tokenizer": str(Path(cfg.run.dir) / "tokenizer")},
            "metrics": {"codebook_size": cfg.tokenizer.codebook_size,
                        **{k: v for k, v in last.items() if isinstance(v, (int, float))}}}


def speech_decoder_configure(ctx: Ctx):
    from megaspeech.config.speech_decoding import SpeechDecoderTrainingConfig
    from megaspeech.speech.tokenizer import tokenizer_fingerprint
    tok = speech_tokenizer_dir(ctx)
    links = [f"run.dir={ctx.run / 'speech_decoder'}", f"train.tokenizer={tok}",
             f"train.data={ctx.run / 'speech_corpus' / 'train'}"]
    return tool_config(SpeechDecoderTrainingConfig, ctx.cfg.speech_decoder, links), {"tokenizer_model": tokenizer_fingerprint(tok)}


def speech_decoder_run(ctx: Ctx, cfg, extra: dict) -> dict:
    from megaspeech.speech.decoder_training import train
    last = train(cfg, log=_progress_log(ctx, "speech_decoder", cfg.train.steps, cfg.train.max_seconds))
    return {"outputs": {"decoder": str(Path(cfg.run.dir) / "decoder")},
            "metrics": {"objective": cfg.model.objective,
                        **{k: v for k, v in last.items() if isinstance(v, (int, float))}}}


def speech_shards_configure(ctx: Ctx):
    schema = tokenize_schema()
    tok, corpus, d = speech_tokenizer_dir(ctx), ctx.run / "speech_corpus", ctx.run / "speech_shards"
    vocab = ctx.run / "text" / "shards" / "vocab.json"

    def one(inputs, out, vocab_file):
        return tool_config(schema, ctx.cfg.speech_shards, [
            f"tokenize.tokenizer={tok}", f"tokenize.inputs={json.dumps([str(i) for i in inputs])}",
            f"tokenize.out_dir={out}", f"tokenize.vocab_file={vocab_file}"])
    # pairs and held-out pairs carry the transcripts as ids of the text vocabulary; unsup is codes only:
    # the TTS audio without its transcripts (at toy scale) plus any real audio given
    real = [str(Path(p).expanduser().resolve()) for p in ctx.cfg.speech_shards.real_audio]
    cfgs = {"pairs": one([corpus / "train"], d / "pairs", vocab),
            "unsup": one([corpus / "train", *real], d / "unsup", "null"),
            "heldout": one([corpus / "heldout"], d / "heldout", vocab)}
    from megaspeech.speech.tokenizer import tokenizer_fingerprint
    return cfgs, {"tokenizer_model": tokenizer_fingerprint(tok), "real_audio": {p: _fingerprint(p) for p in real}}


def _fingerprint(path: str) -> str:
    """What a real-audio input holds: its manifest's hash, or the names and sizes of its files."""
    p = Path(path)
    if (p / "manifest.json").is_file():
        return file_sha(p / "manifest.json")
    files = sorted(p.rglob("*")) if p.is_dir() else [p]
    listing = [(str(f), f.stat().st_size) for f in files if f.is_file()]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def speech_shards_run(ctx: Ctx, cfgs, extra: dict) -> dict:
    from megaspeech.speech.tokenize_corpus import tokenize_corpus
    out, metrics = {}, {}
    for name, cfg in cfgs.items():
        r = tokenize_corpus(cfg.tokenize)
        if not r["done"]:
            raise RuntimeError(f"speech_shards/{name}: manifest not written ({r})")
        m = manifest(Path(cfg.tokenize.out_dir))
        out[name] = cfg.tokenize.out_dir
        metrics[f"{name}_samples"], metrics[f"{name}_tokens"] = m["samples"], m["tokens"]
        metrics[f"{name}_bad_audio"] = len(r["bad"])
    return {"outputs": out, "metrics": metrics}


def _trainer_links(ctx: Ctx, stage: str) -> list[str]:
    return [f"run.dir={ctx.dir(stage)}", "train.progress_bar=false", "metrics.wandb=disabled", *vocab_links(ctx)]


def text_to_token_configure(ctx: Ctx):
    from megaspeech.config.schema import PretrainConfig
    links = [*_trainer_links(ctx, "text_to_token"),
             f"data.sources=[{{name: pairs, path: {ctx.run / 'speech_shards' / 'pairs'}}}]"]
    cfg = tool_config(PretrainConfig, ctx.cfg.text_to_token, links)
    return cfg, {"argv": [*ctx.cfg.text_to_token.overrides, *links]}


def text_to_token_run(ctx: Ctx, cfg, extra: dict) -> dict:
    argv = extra["argv"]
    rows = train_tool(ctx, "text_to_token", "train_text_to_token.py", ctx.cfg.text_to_token, argv, cfg.train.steps)
    return {"outputs": {"run": cfg.run.dir}, "metrics": loss_metrics(rows)}


def interleaved_configure(ctx: Ctx):
    links = [f"input={ctx.run / 'text' / 'shards'}", f"output={ctx.run / 'interleaved' / 'shards'}",
             f"model={ctx.run / 'text_to_token'}"]
    return tool_config(MakeInterleavedConfig, ctx.cfg.interleaved, links), {}


def interleaved_run(ctx: Ctx, cfg, extra: dict) -> dict:
    ctx.progress(f"interleaved: {json.dumps(make_interleaved(cfg))}")
    m = manifest(Path(cfg.output))
    return {"outputs": {"shards": cfg.output},
            "metrics": {"docs": m["samples"], "tokens": m["tokens"], "eta": cfg.interleave.eta,
                        "text_to_token": m["meta"]["text_to_token"]}}


def speech_qa_configure(ctx: Ctx):
    links = [f"text_tokenizer={ctx.run / 'text' / 'shards'}", f"speech_tokenizer={speech_tokenizer_dir(ctx)}",
             f"output={ctx.run / 'speech_qa' / 'shards'}"]
    return tool_config(SpeechQAConfig, ctx.cfg.speech_qa, links), {}


def speech_qa_run(ctx: Ctx, cfg, extra: dict) -> dict:
    ctx.progress(f"speech_qa: {json.dumps(make_speech_qa(cfg))}")
    m = manifest(Path(cfg.output))
    return {"outputs": {"shards": cfg.output}, "metrics": {"qa_pairs": m["samples"], "tokens": m["tokens"]}}


def pretrain_configure(ctx: Ctx):
    import yaml

    from megaspeech.config.schema import PretrainConfig
    from megaspeech.pipeline.mixture_weights import glm4voice_weights
    sec = ctx.cfg.pretrain
    links = _trainer_links(ctx, "pretrain")
    hf = hf_dir(ctx)
    if hf is not None:
        links.append(f"model.init_from_hf={hf}")
    base = tool_config(PretrainConfig, sec, [*links, "data.kind=synthetic"])  # budget only
    budget = base.train.steps * base.train.global_batch * base.train.seq_len
    frag = yaml.safe_load(preset(sec.mixture).read_text())["data"]
    once = {s["name"]: manifest(ctx.run / s["path"])["tokens"] for s in frag["sources"] if s.get("epochs") == 1}
    weights, info = glm4voice_weights(budget, sec.text_share, once, sec.interleaved_scale, sec.speech_share_max)
    sources = []
    for s in frag["sources"]:
        if s["name"] not in weights:
            continue
        if MIXTURE_PATHS.get(s["name"]) != s["path"]:
            raise ValueError(f"{sec.mixture}: source {s['name']} path {s['path']} is not the pipeline's layout "
                             f"{MIXTURE_PATHS.get(s['name'])}")
        epochs = f", epochs: {s['epochs']}" if s.get("epochs") else ""
        sources.append(f"{{name: {s['name']}, path: {s['path']}, weight: {weights[s['name']]:.6g}{epochs}}}")
    data = [f"data.kind={frag.get('kind', 'shards')}", f"data.mix_unit={frag.get('mix_unit', 'tokens')}",
            f"data.root={ctx.run}", f"data.sources=[{', '.join(sources)}]"]
    cfg = tool_config(PretrainConfig, sec, [*links, *data])
    unread = [n for n in ("interleaved",) if n not in weights]  # e.g. the ablation without it
    return cfg, {"argv": [*sec.overrides, *links, *data], "weights": weights, "mixture": info,
                 **({"unread": unread} if unread else {})}


def pretrain_run(ctx: Ctx, cfg, extra: dict) -> dict:
    argv, weights, mixture = extra["argv"], extra["weights"], extra["mixture"]
    rows = train_tool(ctx, "pretrain", "pretrain.py", ctx.cfg.pretrain, argv, cfg.train.steps)
    return {"outputs": {"run": cfg.run.dir},
            "metrics": {**loss_metrics(rows), "weights": weights, "budget_tokens": mixture["budget_tokens"],
                        "expected_epochs": mixture["expected_epochs"]}}


def export_configure(ctx: Ctx):
    cfg = tool_config(ExportConfig, ctx.cfg.export,
                      [f"checkpoint={ctx.dir('pretrain')}", f"out={ctx.dir('export') / 'hf'}"])
    return cfg, {}


def export_run(ctx: Ctx, cfg, extra: dict) -> dict:
    from megaspeech.checkpoint.hf_export import export_hf
    from megaspeech.checkpoint.offline import resolve
    src = resolve(cfg.checkpoint)
    out = export_hf(src, cfg.out, cfg.dtype)
    conf = json.loads((Path(out) / "config.json").read_text())
    return {"outputs": {"hf": str(out), "checkpoint": str(src)},
            "metrics": {"checkpoint": Path(src).name, "vocab_rows": conf["vocab_size"],
                        "architecture": conf["architectures"][0]}}


def eval_configure(ctx: Ctx):
    """Held-out losses, and the evaluation suite (megaspeech.eval) when eval.suite names one: the
    pipeline links the exported model, the run's speech tokenizer and every training dataset of the run
    (the suite refuses to build from a document any of them contains). The spoken items' codes are
    cached in RUN/eval_speech_codes, shared by the variants (they are the same for every model)."""
    e = ctx.cfg.eval
    spec = {"heldout": str(ctx.run / "speech_shards" / "heldout"), "limit": e.heldout_limit,
            "batch_size": e.batch_size, "suite": None}
    if e.suite:
        from megaspeech.config.eval_suite import SuiteConfig
        run = ctx.run
        trained_on = [run / p for p in MIXTURE_PATHS.values()] + [run / "speech_corpus" / "train", run / "speech_qa" / "shards"]
        links = [f"model={ctx.dir('export') / 'hf'}", f"out_dir={ctx.dir('eval') / 'suite'}",
                 f"speech_tokenizer={speech_tokenizer_dir(ctx)}", f"speech_cache={run / 'eval_speech_codes'}",
                 f"speech_decoder={run / 'speech_decoder' / 'decoder'}",
                 f"training_manifests={json.dumps([str(p) for p in trained_on])}"]
        spec["suite"] = as_dict(tool_config(SuiteConfig, StageSection(e.suite, e.overrides), links))
    return spec, {}


def eval_run(ctx: Ctx, spec, extra: dict) -> dict:
    from megaspeech.eval.heldout_loss import heldout_losses
    model = ctx.dir("export") / "hf"
    metrics = heldout_losses(model, spec["heldout"], spec["limit"], spec["batch_size"])
    out = {"heldout": spec["heldout"]}
    if spec["suite"] is None:
        metrics["suite"] = "not run: eval.suite is empty"
    else:
        from megaspeech.config.eval_suite import SuiteConfig
        from megaspeech.eval.run import evaluate
        suite = build(SuiteConfig, spec["suite"])
        res = evaluate(suite, log=ctx.progress)
        metrics["suite"] = {k: res[k] for k in ("table", "results", "items", "split")}
        out["suite"] = str(Path(suite.out_dir) / "eval.json")
    return {"outputs": out, "metrics": metrics}


STAGE_FUNCS = {
    "text": (text_configure, text_run, ()),
    "speech_corpus": (speech_corpus_configure, speech_corpus_run, ()),
    "tokenizer": (tokenizer_configure, tokenizer_run, ("speech_corpus",)),
    "speech_decoder": (speech_decoder_configure, speech_decoder_run, ("speech_corpus", "tokenizer")),
    "speech_shards": (speech_shards_configure, speech_shards_run, ("text", "speech_corpus", "tokenizer")),
    "text_to_token": (text_to_token_configure, text_to_token_run, ("text", "speech_shards")),
    "interleaved": (interleaved_configure, interleaved_run, ("text", "text_to_token")),
    "speech_qa": (speech_qa_configure, speech_qa_run, ("text", "tokenizer")),
    "pretrain": (pretrain_configure, pretrain_run, ("text", "speech_shards", "interleaved")),
    "export": (export_configure, export_run, ("pretrain",)),
    "eval": (eval_configure, eval_run, ("export", "speech_shards", "speech_decoder")),
}
