"""GLM-4-Voice's released tokenizer (megaspeech/speech/glm4voice.py) against golden codes of the release's
own code (THUDM/GLM-4-Voice speech_tokenizer/, commit in the golden file; how they were made:
docs/speech_tokenizer.md). The checkpoint is regenerated here from a seed in the release's layout."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from megaspeech.speech.audio import decode_audio
from tests.helpers.speech_data import librivox_items

GOLDEN = Path(__file__).parent / "golden" / "glm4voice_codes.json"

# small variants of the release's config.json (d_model 1280, 32 layers, pool 4 at 16, VQ at 16, 16,384 codes)
VARIANTS = {
    # the release's structure: causal conv, block-causal attention (200 frames = 4 s), avg pool then VQ at 2
    "release": {},
    # pooling before the last layer (that layer runs block-causal at 12.5 Hz), max pooling, 0.8 s blocks
    "pool_first": {"encoder_layers": 3, "pooling_position": 1, "pooling_type": "max",
                   "quantize_causal_block_size": 40},
    # Whisper's centred conv and plain causal attention
    "causal": {"encoder_causal_convolution": False, "encoder_causal_attention": True,
               "quantize_causal_block_size": None},
}


def release_config(**over) -> dict:
    cfg = {"architectures": ["WhisperVQForConditionalGeneration"], "model_type": "whisper",
           "activation_function": "gelu", "d_model": 64, "encoder_attention_heads": 4, "encoder_ffn_dim": 128,
           "encoder_layers": 4, "decoder_attention_heads": 4, "decoder_ffn_dim": 128, "decoder_layers": 1,
           "num_hidden_layers": 4, "num_mel_bins": 128, "max_source_positions": 1500,
           "max_target_positions": 448, "vocab_size": 51866, "dropout": 0.0, "attention_dropout": 0.0,
           "activation_dropout": 0.0, "scale_embedding": False, "pooling_kernel_size": 4, "pooling_type": "avg",
           "pooling_position": 2, "quantize_position": 2, "quantize_vocab_size": 64,
           "quantize_causal_block_size": 200, "quantize_causal_encoder": False, "quantize_encoder_only": False,
           "quantize_ema_decay": 0.99, "quantize_restart_interval": 100, "quantize_commit_coefficient": 0.25,
           "quantize_loss_scale": 10.0, "encoder_causal_attention": False, "encoder_causal_convolution": True,
           "skip_language_detection": True, "torch_dtype": "float32"}
    cfg.update(over)
    return cfg


def make_release(out: Path, seed: int = 0, **over) -> Path:
    """A random checkpoint in THUDM/glm-4-voice-tokenizer's layout: config.json, model.safetensors with the
    release's key names (encoder, VQ, EMA buffers, final norm and a decoder piece the tokenizer ignores),
    preprocessor_config.json. Deterministic in seed."""
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor
    cfg = release_config(**over)
    g = torch.Generator().manual_seed(seed)
    d, m, f, K = cfg["d_model"], cfg["num_mel_bins"], cfg["encoder_ffn_dim"], cfg["quantize_vocab_size"]

    def w(*shape, fan_in=None):
        return torch.randn(*shape, generator=g) / math.sqrt(fan_in or shape[-1])

    def norm(name):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = 1 + 0.1 * w(d, fan_in=1), 0.1 * w(d, fan_in=1)

    e = "model.encoder."
    sd = {f"{e}conv1.weight": w(d, m, 3, fan_in=3 * m), f"{e}conv1.bias": 0.1 * w(d, fan_in=1),
          f"{e}conv2.weight": w(d, d, 3, fan_in=3 * d), f"{e}conv2.bias": 0.1 * w(d, fan_in=1),
          f"{e}embed_positions.weight": 0.5 * w(cfg["max_source_positions"], d, fan_in=1)}
    for i in range(cfg["encoder_layers"]):
        p = f"{e}layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[f"{p}self_attn.{n}.weight"] = w(d, d)
            if n != "k_proj":
                sd[f"{p}self_attn.{n}.bias"] = 0.1 * w(d, fan_in=1)
        sd[f"{p}fc1.weight"], sd[f"{p}fc1.bias"] = w(f, d), 0.1 * w(f, fan_in=1)
        sd[f"{p}fc2.weight"], sd[f"{p}fc2.bias"] = w(d, f), 0.1 * w(d, fan_in=1)
        norm(f"{p}self_attn_layer_norm")
        norm(f"{p}final_layer_norm")
    norm(f"{e}layer_norm")
    n_pos2 = math.ceil(cfg["max_source_positions"] / cfg["pooling_kernel_size"])
    sd[f"{e}codebook.weight"] = w(K, d, fan_in=1)
    sd[f"{e}embed_positions2.weight"] = sd[f"{e}embed_positions.weight"][:n_pos2].clone()
    sd[f"{e}ema_count"], sd[f"{e}ema_weight"] = torch.ones(K), sd[f"{e}codebook.weight"].clone()
    norm("model.decoder.layer_norm")
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    WhisperFeatureExtractor(feature_size=m).save_pretrained(out)
    return out


def golden_audios() -> dict[str, np.ndarray]:
    """The five LibriVox utterances, and all five twice in a row (49 s: two 30 s segments)."""
    a = {p.stem: decode_audio(p) for p, _ in librivox_items()}
    a["all_twice"] = np.concatenate([*a.values(), *a.values()])
    return a


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_codes_equal_the_release_code(tmp_path, golden, variant):
    from megaspeech.speech.glm4voice import GLM4VoiceTokenizer
    from megaspeech.speech.tokenizer import load_tokenizer, tokenize_audios, tokenizer_format
    d = make_release(tmp_path / variant, golden["seed"], **VARIANTS[variant])
    model, whisper, cfg = load_tokenizer(d)  # told apart by its files (format "auto")
    assert tokenizer_format(d) == "glm4voice" and isinstance(model, GLM4VoiceTokenizer)
    assert (cfg.codebook_size, cfg.frame_rate, whisper) == (64, 12.5, None)
    audios = golden_audios()
    codes = dict(zip(audios, tokenize_audios(model, list(audios.values()))))
    want = golden["codes"][variant]
    assert sorted(codes) == sorted(want)
    for k, c in codes.items():
        assert len(c) == math.ceil(len(audios[k]) / 1280), k
        assert c.tolist() == want[k], f"{variant}/{k}: codes differ from the release code's"
    assert len(set(codes["all_twice"].tolist())) > 12  # the random model still spreads over the codebook


def test_block_causal_codes_do_not_look_past_their_block(tmp_path):
    """Release structure: causal conv + block-causal attention (200 frames = 4 s = 50 tokens), so the codes of
    the first two blocks are the same whatever audio follows them."""
    from megaspeech.speech.tokenizer import load_tokenizer, tokenize_audios
    model = load_tokenizer(make_release(tmp_path / "r"))[0]
    a = golden_audios()["all_twice"]
    ten, fourteen = tokenize_audios(model, [a[:160000], a[:224000]])
    assert ten[:100].tolist() == fourteen[:100].tolist()
    assert ten[100:].tolist() != fourteen[100:125].tolist()  # the third block sees its own future


def test_tokenize_speech_tool_and_vocab_check(tmp_path):
    """launch/tokenize_speech.py's library call on the release dir: the shards hold the release's codes,
    and the vocabulary check reads the codebook from its config.json."""
    from megaspeech.config.load import ConfigError
    from megaspeech.data.shards import read_shard
    from megaspeech.speech.tokenize_corpus import TokenizeConfig, tokenize_corpus
    from megaspeech.speech.tokenizer import check_speech_vocab, codebook_size, load_tokenizer, tokenizer_fingerprint
    from megaspeech.vocab import Vocab, VocabMismatch
    rel = make_release(tmp_path / "glm-4-voice-tokenizer", json.loads(GOLDEN.read_text())["seed"])
    assert codebook_size(rel) == 64 and len(tokenizer_fingerprint(rel)) == 16
    check_speech_vocab(64, "vocab.json", rel)
    with pytest.raises(VocabMismatch, match=r"speech_size=16384.*codebook_size=64"):
        check_speech_vocab(16384, "vocab.json", rel)
    with pytest.raises(ConfigError, match="GLM-4-Voice release"):
        load_tokenizer(rel, "megaspeech")
    with pytest.raises(FileNotFoundError, match="not a GLM-4-Voice tokenizer"):
        load_tokenizer(tmp_path, "glm4voice")
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    items = librivox_items()[1:3]
    for p, _ in items:
        (wavs / p.name).symlink_to(p)
    Vocab(text_size=100, speech_size=64).save(tmp_path / "vocab.json")
    cfg = TokenizeConfig(tokenizer=str(rel), tokenizer_format="glm4voice", inputs=[str(wavs)],
                         out_dir=str(tmp_path / "out"), vocab_file=str(tmp_path / "vocab.json"), workers=1)
    r = tokenize_corpus(cfg)
    assert r["done"] and r["samples"] == 2 and not r["bad"]
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["meta"]["tokenizer_format"] == "glm4voice" and man["meta"]["codebook_size"] == 64
    want = json.loads(GOLDEN.read_text())["codes"]["release"]
    got = {s["source"]: s["codes"].tolist() for sh in man["shards"]
           for _, s in read_shard(tmp_path / "out" / sh["name"], "speech", sh["sha256"])}
    assert {Path(k).stem: v for k, v in got.items()} == {p.stem: want[p.stem] for p, _ in items}
    Vocab(text_size=100, speech_size=16384).save(tmp_path / "vocab.json")
    with pytest.raises(VocabMismatch):
        tokenize_corpus(TokenizeConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "out2")}))


def test_pipeline_speech_shards_stage_takes_the_release(tmp_path):
    """speech_shards.overrides [tokenize.tokenizer_format=glm4voice, tokenize.tokenizer=DIR]: the stage tokenizes
    with DIR (not RUN/tokenizer/tokenizer) and its config hash follows the release's files; so do the speech
    decoder and spoken-QA stages."""
    from megaspeech.config.pipeline import PipelineConfig, SpeechShardsSection
    from megaspeech.pipeline.stages import Ctx, speech_decoder_configure, speech_qa_configure, speech_shards_configure
    from megaspeech.speech.tokenizer import tokenizer_fingerprint
    rel = make_release(tmp_path / "glm-4-voice-tokenizer")
    section = SpeechShardsSection(config="configs/speech_tokenize.yaml", overrides=[
        "tokenize.tokenizer_format=glm4voice", f"tokenize.tokenizer={rel}"])
    cfgs, extra = speech_shards_configure(Ctx(PipelineConfig(speech_shards=section), tmp_path / "run"))
    assert {c.tokenize.tokenizer for c in cfgs.values()} == {str(rel.resolve())}
    assert {c.tokenize.tokenizer_format for c in cfgs.values()} == {"glm4voice"}
    assert extra["tokenizer_model"] == tokenizer_fingerprint(rel)
    # the stages that read speech codes use the same release: the decoder is trained for its codes, the
    # spoken QA is tokenized with it
    ctx = Ctx(PipelineConfig(speech_shards=section), tmp_path / "run")
    dec, dec_extra = speech_decoder_configure(ctx)
    assert dec.train.tokenizer == str(rel.resolve()) and dec_extra["tokenizer_model"] == tokenizer_fingerprint(rel)
    assert speech_qa_configure(ctx)[0].speech_tokenizer == str(rel.resolve())
    # nothing reads a tokenizer trained here: the tokenizer stage names the release and trains none, and
    # the text vocabulary takes K from the release
    from megaspeech.pipeline.context import codebook_size as run_codes
    from megaspeech.pipeline.stages import tokenizer_configure, tokenizer_run
    from megaspeech.speech.tokenizer import codebook_size
    assert run_codes(ctx) == codebook_size(rel) != run_codes(Ctx(PipelineConfig(), tmp_path / "run"))
    cfg, extra = tokenizer_configure(ctx)
    assert extra == {"release": str(rel.resolve()), "tokenizer_model": tokenizer_fingerprint(rel)}
    out = tokenizer_run(ctx, cfg, extra)
    assert out["outputs"] == {"tokenizer": str(rel.resolve())} and not (tmp_path / "run" / "tokenizer").exists()
