"""What every recipe stage shares: the run context (Ctx), a tool's config from its section plus the
pipeline's links, and the links themselves (the speech tokenizer, the text vocabulary, manifests)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from megaspeech.config.load import load_config
from megaspeech.config.pipeline import PipelineConfig, StageSection
from megaspeech.pipeline.layout import VARIANT_STAGES, preset


@dataclass
class Ctx:
    cfg: PipelineConfig
    run: Path
    done: dict[str, dict] = field(default_factory=dict)  # finished stages' markers
    progress: Callable[[str], None] = print  # one console line

    def dir(self, stage: str) -> Path:
        """RUN/<stage>, or RUN/<stage>-<variant> for the stages a variant redoes (run.variant)."""
        v = self.cfg.run.variant
        return self.run / (f"{stage}-{v}" if v and stage in VARIANT_STAGES else stage)


def tool_config(schema, section: StageSection, links: list[str]):
    """The tool's config: its preset, the section's overrides, then the pipeline's links (they win)."""
    return load_config(schema, preset(section.config), [*section.overrides, *links])


def as_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------- shared links
def codebook_size(ctx: Ctx) -> int:
    """K, the speech codes of the text vocabulary: the released tokenizer's when speech_shards names one,
    else the tokenizer stage's preset."""
    from megaspeech.speech.tokenizer import codebook_size as codes_of
    from megaspeech.speech.tokenizer_training import SpeechTokenizerTrainingConfig
    tok = speech_tokenizer_dir(ctx)
    if tok != ctx.run / "tokenizer" / "tokenizer":
        return codes_of(tok)
    return tool_config(SpeechTokenizerTrainingConfig, ctx.cfg.tokenizer, []).tokenizer.codebook_size


def tokenize_schema():
    from megaspeech.speech.tokenize_corpus import TokenizeConfig
    return dataclasses.make_dataclass("TokenizeTool", [("tokenize", TokenizeConfig, field(default_factory=TokenizeConfig))])


def speech_tokenizer_dir(ctx: Ctx) -> Path:
    """The run's speech tokenizer: RUN/tokenizer/tokenizer, or GLM-4-Voice's released one when the
    speech_shards section names it (tokenize.tokenizer_format=glm4voice, tokenize.tokenizer=DIR)."""
    own = tool_config(tokenize_schema(), ctx.cfg.speech_shards, []).tokenize
    if own.tokenizer_format == "glm4voice":
        return Path(own.tokenizer).expanduser().resolve()
    return ctx.run / "tokenizer" / "tokenizer"


def hf_dir(ctx: Ctx) -> Path | None:
    v = ctx.cfg.init_from_hf
    if not v:
        return None
    if v == "smollm2":
        from megaspeech.model.smollm2 import smollm2_dir
        return smollm2_dir()
    return Path(v).expanduser().resolve()


def text_vocab(ctx: Ctx):
    from megaspeech.vocab import Vocab
    return Vocab.load(ctx.run / "text" / "shards" / "vocab.json")


def vocab_links(ctx: Ctx) -> list[str]:
    """Pre-training vocab.* = the text shards' vocabulary (text tokenizer + K codes + specials)."""
    v = text_vocab(ctx)
    out = [f"vocab.text_size={v.text_size}", f"vocab.speech_size={v.speech_size}",
           f"vocab.specials={json.dumps(v.specials)}"]
    if v.hf_tokenizer:
        out += ["vocab.sp_model=null", f"vocab.hf_tokenizer={v.hf_tokenizer}"]
    else:
        out += [f"vocab.sp_model={v.sp_model}", "vocab.hf_tokenizer=null"]
    return out


def manifest(path: Path) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())
