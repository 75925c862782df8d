"""Train the text-to-token model (arXiv 2411.17607): the pre-training script with a TTS-only data preset.

    deepspeed --num_gpus N launch/train_text_to_token.py --config configs/text_to_token_tiny.yaml [k=v ...]

It is launch/pretrain.py (same trainer, parallel layouts, checkpoints, metrics) after checking that
the data is what a text-to-token model needs: every source is a `speech` dataset of supervised pairs
(codes + transcript `text`) and data.asr_fraction is 0, so every pair is rendered as
    <|bos|> transcript <|begin_of_speech|> codes <|end_of_speech|>
which is exactly the prompt megaspeech/synth/generate.py continues.

Quality check (no training): WER of codes generated for held-out transcripts, read back through the
speech tokenizer's ASR path (megaspeech/synth/text_to_token_eval.py), for the checkpoint in run.dir:
    python launch/train_text_to_token.py --config ... --eval-heldout DIR --speech-tokenizer DIR The loss covers the transcript
tokens too (the data pipeline has no per-modality loss mask yet); `loss_speech` in metrics.jsonl is
the text-to-token loss proper.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from megaspeech.config.cli import parse_args
from megaspeech.config.schema import PretrainConfig
from megaspeech.data.shards import Dataset, read_shard


def check_tts_data(cfg: PretrainConfig) -> list[str]:
    """Problems that make cfg unfit for text-to-token training (empty list: fine)."""
    d = cfg.data
    errors = []
    if d.kind != "shards":
        errors.append("data.kind must be shards (supervised speech shards with transcripts)")
    if d.asr_fraction != 0.0:
        errors.append(f"data.asr_fraction={d.asr_fraction}: set it to 0.0 so every pair is rendered text -> speech")
    for s in d.sources:
        path = s.resolved_path()
        try:
            ds = Dataset(path, cfg.vocab, kind="speech")
        except Exception as e:  # noqa: BLE001 - reported with the source name
            errors.append(f"data.sources[{s.name}]: {e}")
            continue
        first = next(iter(read_shard(path / ds.shards[0]["name"], "speech")), None) if ds.shards else None
        if first is None or "text" not in first[1]:
            errors.append(f"data.sources[{s.name}] ({path}): samples have no `text` transcript; text-to-token "
                          f"training needs supervised pairs (launch/tokenize_speech.py on transcribed audio)")
    return errors


def evaluate(cfg: PretrainConfig, args) -> int:
    from megaspeech.data.text import TextTokenizer
    from megaspeech.synth.text_to_token_eval import generated_wer, heldout_transcripts
    from megaspeech.synth.generate import GenerationConfig, SpeechGenerator
    from megaspeech.checkpoint.offline import load_decoder
    tok = TextTokenizer.from_dir(args.text_tokenizer)
    model, vocab, version = load_decoder(cfg.run.dir)
    tok.vocab.check_same(vocab, f"text-to-token model {cfg.run.dir}")
    gen = SpeechGenerator(model, vocab, GenerationConfig(batch_size=32), version)
    refs = heldout_transcripts(args.eval_heldout, tok, args.eval_limit)
    res = generated_wer(gen, tok, args.speech_tokenizer, refs)
    print(json.dumps({"model": version, **res, "speech_codes_per_s": round(gen.codes_per_second, 1)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def extra(p):
        p.add_argument("--dry-run", action="store_true")
        p.add_argument("--world-size", type=int, default=None)
        p.add_argument("--eval-heldout", default=None, help="held-out speech/audio dataset: report WER, do not train")
        p.add_argument("--speech-tokenizer", default=None, help="speech tokenizer dir (with --eval-heldout)")
        p.add_argument("--text-tokenizer", default=str(Path(__file__).resolve().parents[1] / "megaspeech/demo/tokenizer"),
                       help="dir with vocab.json + SentencePiece model (with --eval-heldout)")
        p.add_argument("--eval-limit", type=int, default=100)
    cfg, args = parse_args(PretrainConfig, __doc__, argv, extra=extra)
    if args.eval_heldout:
        if not args.speech_tokenizer:
            print("config error: --eval-heldout needs --speech-tokenizer DIR", file=sys.stderr)
            return 2
        return evaluate(cfg, args)
    errors = check_tts_data(cfg)
    if errors:
        print("config error: " + json.dumps(errors, indent=1), file=sys.stderr)
        return 2
    import pretrain
    return pretrain.main(argv)


if __name__ == "__main__":
    sys.exit(main())
