"""Where the recipe pipeline writes (RUN = the pipeline's run dir). One stage = one dir RUN/<stage>/
holding its outputs, `stage.json` (the completion marker: inputs hash, outputs, metrics, seconds)
and `log.txt`. Pre-training configs read the data through `data.root: RUN` and MIXTURE_PATHS
(configs/data/mixture_glm4voice.yaml, configs/9b.yaml)."""
from __future__ import annotations

from pathlib import Path

import megaspeech

ROOT = Path(megaspeech.__file__).resolve().parents[1]  # the repository: configs/ and launch/

STAGES = ("text", "speech_corpus", "tokenizer", "speech_decoder", "speech_shards", "text_to_token", "interleaved",
          "speech_qa", "pretrain", "export", "eval", "report")

MIXTURE_PATHS = {
    "text": "text/shards",                 # text shards (vocabulary of the LLM the run starts from)
    "speech": "speech_shards/unsup",       # speech codes only
    "asr_tts": "speech_shards/pairs",      # codes + transcripts (ASR / TTS pairs)
    "interleaved": "interleaved/shards",   # synthetic interleaved text/speech
}

# stages redone per variant (run.variant: RUN/<stage>-<variant>/; the data stages are shared), e.g.
# the interleaving ablation: run.variant=no_interleaved pretrain.interleaved_scale=0
VARIANT_STAGES = ("pretrain", "export", "eval")


def preset(path: str) -> Path:
    """A tool preset named in the pipeline config: absolute, relative to the cwd, else to the repository."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or p.exists() else ROOT / p
