"""The links between the recipe's tools (issue 14): default paths chain, configs name their data,
the 9B config trains on the GLM-4-Voice mixture, preset headers say what loads."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from megaspeech.config.load import ConfigError, load_config
from megaspeech.config.schema import PretrainConfig

ROOT = Path(__file__).resolve().parents[2]


def test_default_paths_of_consecutive_tools_chain():
    from megaspeech.config.prep import DataPrepConfig
    from megaspeech.speech.corpus import CorpusConfig
    from megaspeech.speech.tokenize_corpus import TokenizeConfig
    from megaspeech.speech.tokenizer_training import SpeechTokenizerTrainingConfig
    st = SpeechTokenizerTrainingConfig()
    # corpus -> speech tokenizer training -> tokenize_speech
    assert CorpusConfig().out_dir == st.train.data
    assert TokenizeConfig().tokenizer == f"{st.run.dir}/tokenizer"
    assert TokenizeConfig().inputs == [CorpusConfig().out_dir]
    # text tokenizer -> text shards
    d = DataPrepConfig()
    assert d.text.tokenizer == d.tokenizer.out_dir


def _yaml(name, schema=None):
    import yaml
    return yaml.safe_load((ROOT / "configs" / name).read_text())


def test_preset_paths_chain():
    corpus = _yaml("speech_corpus.yaml")["corpus"]["out_dir"]
    stok = load_config(__import__("megaspeech.speech.tokenizer_training", fromlist=["SpeechTokenizerTrainingConfig"]).SpeechTokenizerTrainingConfig,
                       ROOT / "configs/speech_tokenizer_tiny.yaml")
    tok = _yaml("speech_tokenize.yaml")["tokenize"]
    assert stok.train.data == corpus and tok["inputs"] == [corpus]
    assert tok["tokenizer"] == f"{stok.run.dir}/tokenizer"
    t2t = load_config(PretrainConfig, ROOT / "configs/text_to_token_tiny.yaml")
    assert [s.path for s in t2t.data.sources] == [tok["out_dir"]]
    inter = _yaml("interleave_tiny.yaml")
    assert inter["model"] == t2t.run.dir
    e2e = load_config(PretrainConfig, ROOT / "configs/e2e_tiny.yaml")
    assert {s.name: s.path for s in e2e.data.sources}["speech"] == tok["out_dir"]
    assert {s.name: s.path for s in e2e.data.sources}["interleaved"] == inter["output"]
    assert _yaml("speech_qa_tiny.yaml")["speech_tokenizer"] == tok["tokenizer"]


def test_config_without_data_fails_unless_synthetic_is_explicit(tmp_path):
    cfg = tmp_path / "nodata.yaml"
    cfg.write_text((ROOT / "configs/tiny.yaml").read_text().split("\ndata:")[0] + "\n")
    with pytest.raises(ConfigError, match=r"data\.kind.*names no data.*data\.kind=synthetic"):
        load_config(PretrainConfig, cfg)
    assert load_config(PretrainConfig, cfg, ["data.kind=synthetic"]).data.kind == "synthetic"


def test_9b_trains_on_the_glm4voice_mixture_under_its_data_root():
    cfg = load_config(PretrainConfig, ROOT / "configs/9b.yaml")
    d = cfg.data
    assert d.kind == "shards" and d.mix_unit == "tokens"
    src = {s.name: s for s in d.sources}
    root = Path(d.root)
    assert {n: Path(s.path).relative_to(root).as_posix() for n, s in src.items()} == {
        "text": "text/shards", "speech": "speech_shards/unsup", "asr_tts": "speech_shards/pairs",
        "interleaved": "interleaved/shards"}
    assert src["text"].weight == 0.30 and src["text"].epochs is None
    assert src["speech"].epochs == 1 and src["asr_tts"].epochs == 1
    # the same layout as the pipeline writes (megaspeech.pipeline.layout)
    from megaspeech.pipeline.layout import MIXTURE_PATHS
    assert {n: Path(s.path).relative_to(root).as_posix() for n, s in src.items()} == MIXTURE_PATHS
    # a relative root resolves once: loading the run's saved config again gives the same dirs
    again = load_config(PretrainConfig, ROOT / "configs/9b.yaml", ["data.root=rel/root"])
    paths = [s.path for s in again.data.sources]
    import dataclasses
    from megaspeech.config.data import DataConfig, SourceConfig
    d2 = DataConfig(**{**dataclasses.asdict(again.data), "sources": [SourceConfig(**dataclasses.asdict(s))
                                                                     for s in again.data.sources]})
    assert [s.path for s in d2.sources] == paths and all(Path(p).is_absolute() for p in paths)


def test_distill_preset_header_matches_what_loads():
    from megaspeech.speech.tokenizer_training import SpeechTokenizerTrainingConfig
    f = ROOT / "configs/speech_tokenizer_tiny_distill.yaml"
    cfg = load_config(SpeechTokenizerTrainingConfig, f)
    said = int(re.search(r"split after layer (\d+)", f.read_text()).group(1))
    assert cfg.tokenizer.split_layer == said == 2


def test_convert_smollm2_tool_reuses_the_cache_and_never_overwrites_foreign_dirs(tmp_path, capsys):
    from megaspeech.model.smollm2 import smollm2_dir
    cached = smollm2_dir()  # converted once per machine (~1-2 min), then cached
    capsys.readouterr()  # what a first conversion printed
    out = subprocess.run([sys.executable, str(ROOT / "launch/convert_smollm2.py"), "--config",
                          str(ROOT / "configs/hf/convert_smollm2.yaml"), f"out={cached}"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(cached)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a converted SmolLM2 dir"):
        smollm2_dir(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_eta_respects_a_time_budget():
    """The ETA line counts to the step total, or to a time budget that ends the stage first."""
    from megaspeech.pipeline.progress import eta_line
    assert eta_line("t", 100, 1100, 500.0) == "[t] step 100/1100 (9%) eta 1h23m"  # 5 s/step x 1000 steps
    assert eta_line("t", 100, 1100, 500.0, max_seconds=2700) == "[t] step 100/1100 (9%) eta 36m40s"
    assert eta_line("t", 100, 1100, 3000.0, max_seconds=2700).endswith("eta 0m00s")
