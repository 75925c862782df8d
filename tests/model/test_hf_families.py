"""Issue 37 (A): continue from an HF checkpoint of every supported family (Llama with llama3 rope
scaling and tied embeddings, Qwen2 with QKV bias and tied embeddings, Mistral, GLM-4 with partial
rotary and QKV bias), each a small random model built with transformers' own class, its tokenizer
shorter than its embedding. The shape comes from config.json; logits equal the HF model's at TP=1 and
TP=2; the export generates what the original generates; what is not implemented is refused."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from megaspeech.checkpoint.hf_export import export_hf, speech_token, text_pad_token, write_hf
from megaspeech.checkpoint.hf_import import init_from_hf
from megaspeech.config.load import ConfigError, load_config
from megaspeech.config.schema import PretrainConfig
from megaspeech.data.text import TextTokenizer, hf_vocab
from megaspeech.model.llm import DecoderLM, rope_inv_freq
from megaspeech.parallel.layers import TorchLayers
from megaspeech.parallel.state import Layout
from tests.helpers.hf_families import FAMILIES, ROWS, WORDS, build_family
from tests.helpers.launch import ROOT, free_port

PROMPTS = ["the old city and the river", "she was in the small light", "two voice song of night"]
# acceptance 4: one step at a negligible learning rate (AdamW moves no fp32 weight), 1 process
RUN_YAML = """model: {{init_from_hf: {src}, vocab_multiple: 64}}
vocab: {{speech_size: 8}}
data: {{kind: synthetic}}
train: {{steps: 1, seq_len: 32, micro_batch: 2, global_batch: 2, progress_bar: false}}
optim: {{lr: 1.0e-20, min_lr: 0.0, warmup_steps: 0}}
checkpoint: {{interval: 0, save_at_end: true}}
metrics: {{wandb: disabled, tensorboard: false}}
run: {{dir: {run}}}
"""


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_families")
    return {f: build_family(f, root / f, seed=i) for i, f in enumerate(FAMILIES)}


def config_for(hf_dir, tmp_path, overrides=()):
    """A run config that names only init_from_hf: model.* and vocab.text_size come from config.json."""
    y = tmp_path / "run.yaml"
    y.write_text(f"model: {{init_from_hf: {hf_dir}, vocab_multiple: 64}}\nvocab: {{speech_size: 8}}\n"
                 f"data: {{kind: synthetic}}\n")
    return load_config(PretrainConfig, y, list(overrides))


def imported(hf_dir, tmp_path):
    cfg = config_for(hf_dir, tmp_path)
    ours = DecoderLM(cfg.model, TorchLayers(), cfg.padded_vocab_size(), seed=0)
    init_from_hf(ours, cfg, Layout(1, 1, 1, 0, 0, 0, 0, 1))
    return cfg, ours.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_export_and_generation(family, hf_dirs, tmp_path):
    src = hf_dirs[family]
    cfg, ours = imported(src, tmp_path)
    assert cfg.model.family == family and cfg.vocab.text_size == ROWS and cfg.vocab.hf_tokenizer == str(src)
    orig = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ids = torch.randint(0, ROWS, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).transpose(0, 1)[..., :ROWS], orig(ids).logits, atol=1e-5, rtol=0)
    out = write_hf(ours.state_dict(), cfg.model, cfg.vocab, tmp_path / "export")
    new = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(new).__name__ == type(orig).__name__
    tok, new_tok, v = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out), cfg.vocab
    assert len(tok) < ROWS and len(new_tok) == v.size
    assert new_tok.convert_tokens_to_ids(text_pad_token(ROWS - 1)) == ROWS - 1
    assert new_tok.convert_tokens_to_ids(speech_token(0)) == v.speech_offset == ROWS
    assert [new_tok.convert_tokens_to_ids(s) for s in v.specials] == [v.special(s) for s in v.specials]
    assert_same_generations(src, out)


def assert_same_generations(src, out):
    orig = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    new = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok, new_tok = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
    full = 0
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        assert new_tok(prompt, return_tensors="pt").input_ids.tolist() == ids.tolist()
        with torch.no_grad():
            ga = orig.generate(ids, max_new_tokens=12, do_sample=False)
            gb = new.generate(ids, max_new_tokens=12, do_sample=False)
        assert torch.equal(ga, gb), (prompt, ga, gb)
        full += ga.shape[1] == ids.shape[1] + 12
    assert full, "every generation stopped early: the comparison would be too short"


def test_pretrain_continues_from_hf_and_exports(hf_dirs, tmp_path):
    """GLM-4 (padded vocabulary), Qwen2 (QKV bias, tied) and Llama (llama3 rope scaling, tied), each
    through launch/pretrain.py with only model.init_from_hf naming the model, then exported: the export
    generates what the original generates. The three runs start at once (mostly start-up time)."""
    procs = {}
    for family in ("glm", "qwen2", "llama"):
        y = tmp_path / f"{family}.yaml"
        y.write_text(RUN_YAML.format(src=hf_dirs[family], run=tmp_path / family))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port",
               str(free_port()), "launch/pretrain.py", "--config", str(y)]
        log = open(tmp_path / f"{family}.log", "w")
        procs[family] = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log,
                                         stderr=subprocess.STDOUT)
    for family, p in procs.items():
        assert p.wait(timeout=400) == 0, (tmp_path / f"{family}.log").read_text()[-3000:]
    for family in procs:
        saved = yaml.safe_load((tmp_path / family / "config.yaml").read_text())
        assert saved["model"]["family"] == family and saved["vocab"]["text_size"] == ROWS
        out = export_hf(tmp_path / family / "checkpoints" / "step00000001", tmp_path / f"{family}_hf")
        assert_same_generations(hf_dirs[family], out)


def test_llama3_rope_scaling_changes_the_tables():
    plain = rope_inv_freq(16, 500000.0)
    scaled = rope_inv_freq(16, 500000.0, (8.0, 1.0, 4.0, 64))  # tests.helpers.hf_families.LLAMA3
    assert scaled[0] == plain[0] and torch.allclose(scaled[-1], plain[-1] / 8)  # short kept, long / factor
    assert ((scaled != plain) & (scaled != plain / 8)).any()  # the interpolated band


def test_tp2_logits_equal_hf(hf_dirs, tmp_path):
    """One 2-process gloo run over all four families (megatron TP layers, vocab-parallel head)."""
    (tmp_path / "dirs.json").write_text(json.dumps({f: str(d) for f, d in hf_dirs.items()}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "tests/helpers/hf_tp2_worker.py", str(tmp_path)]
    p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert all(f"{f}: max |diff|" in p.stdout for f in FAMILIES), p.stdout


def test_yaml_values_that_disagree_name_both(hf_dirs, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.hidden_size=128 in the config .* has 64"):
        config_for(hf_dirs["glm"], tmp_path, ["model.hidden_size=128"])
    with pytest.raises(ConfigError, match=r"vocab\.text_size=72 .* has 96"):
        config_for(hf_dirs["qwen2"], tmp_path, ["vocab.text_size=72"])
    cfg = config_for(hf_dirs["glm"], tmp_path, ["model.hidden_size=64", "model.rope_fraction=0.5"])  # agreeing
    assert cfg.model.num_layers == 2


@pytest.mark.parametrize("change, field", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0,
                          "original_max_position_embeddings": 64}}, "rope_type"),
    ({"sliding_window": 16}, "sliding_window"),
    ({"use_sliding_window": True, "sliding_window": 16}, "use_sliding_window"),
    ({"model_type": "gemma"}, "model_type"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
])
def test_unsupported_options_are_refused(change, field, hf_dirs, tmp_path):
    family = {"sliding_window": "mistral", "use_sliding_window": "qwen2"}.get(field, "llama")
    d = tmp_path / "m"
    d.mkdir()
    c = json.loads((hf_dirs[family] / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**c, **change}))
    with pytest.raises(ConfigError, match=field) as e:
        config_for(d, tmp_path)
    assert "supported" in str(e.value)


def test_text_shards_use_the_embedding_rows(hf_dirs):
    """A tokenizer shorter than the embedding: text shards are written in vocab.text_size = the rows."""
    v = hf_vocab(hf_dirs["glm"], speech_size=8)
    assert v.text_size == ROWS
    tok = TextTokenizer(v)
    assert max(tok.encode(" ".join(WORDS))) < 72 < v.text_size


def test_9b_yaml_is_glm4_9b_and_dry_runs_without_the_weights(tmp_path, capsys):
    """configs/9b.yaml spells GLM-4-9B's config.json (transformers' GlmConfig defaults are GLM-4-9B's):
    loading it against such a config.json finds no difference; without the dir --dry-run still works."""
    import importlib.util
    from transformers import GlmConfig
    spec = importlib.util.spec_from_file_location("pretrain", ROOT / "launch/pretrain.py")
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)
    GlmConfig().save_pretrained(tmp_path)
    cfg = load_config(PretrainConfig, ROOT / "configs/9b.yaml", [f"model.init_from_hf={tmp_path}"])
    assert cfg.vocab.text_size == 151552 and cfg.vocab.hf_tokenizer == str(tmp_path)
    absent = load_config(PretrainConfig, ROOT / "configs/9b.yaml", ["model.init_from_hf=/nonexistent/glm-4-9b-hf"])
    assert absent.model == dataclasses.replace(cfg.model, init_from_hf="/nonexistent/glm-4-9b-hf")
    assert pretrain.main(["--config", str(ROOT / "configs/9b.yaml"), "--dry-run", "--world-size", "128"]) == 0
    assert "parameters: 9,535,217,664" in capsys.readouterr().out


def test_kv_cache_decoding_uses_the_scaled_rope(hf_dirs, tmp_path):
    """KVCacheLM (model/decode.py) on the imported Llama-3.1 model: its logits are the full forward's."""
    from megaspeech.model.decode import KVCacheLM
    _, ours = imported(hf_dirs["llama"], tmp_path)
    ids = torch.randint(0, ROWS, (40,), generator=torch.Generator().manual_seed(2))
    lm = KVCacheLM(ours)
    got = [lm.prefill([ids[:30]], max_new=10)] + [lm.step(ids[30 + j: 31 + j]) for j in range(9)]
    with torch.no_grad():
        ref = ours(ids[None])[:, 0]
    for j, g in enumerate(got):
        torch.testing.assert_close(g[0], ref[29 + j], atol=1e-5, rtol=1e-5)
