"""Evaluation test material: the suite config of the tests and the small pre-training run whose
validation loss the suite recomputes."""
from __future__ import annotations

from megaspeech.config.eval_suite import SuiteConfig
from tests.helpers.heldout_data import SP_MODEL, VOCAB

N_DOCS, STORIES = 6, 60
STEPS = 8  # the validation run's training steps


def suite_cfg(docs_dir, **kw) -> SuiteConfig:
    base = dict(corpus=f"files:{docs_dir}/*.txt", heldout_docs=N_DOCS, story_items=STORIES, story_context=2,
                story_directions=["T->T"], word_items=0, qa_items=0, knowledge_qa_items=0, asr_items=0, tts_items=0,
                text_tokenizer=str(VOCAB.sp_model), batch_size=16)
    return SuiteConfig(**{**base, **kw})


SMALL = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128", "model.num_heads=4",
         "model.num_kv_heads=2", "train.seq_len=64", "train.global_batch=8", "metrics.wandb=disabled",
         "metrics.tensorboard=false", f"vocab.sp_model={SP_MODEL}", "parallel.zero_stage=1",
         f"train.steps={STEPS}", "checkpoint.interval=4", "checkpoint.keep=2", "optim.warmup_steps=2",
         "data.open_shards=1"]  # training data: tiny.yaml's demo text shards
