"""Audio shards -> tokenizer training (exact resume) -> speech-code shards (multi-process, resume,
bad audio), on real LibriVox audio and espeak-ng speech synthesized here."""
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from megaspeech.data.shards import ShardWriter, open_dataset
from megaspeech.speech import audio_shards  # noqa: F401
from megaspeech.speech.audio import decode_audio, encode_flac
from megaspeech.speech.audio_batches import AudioBatches
from megaspeech.speech.augment import AugmentConfig
from megaspeech.speech.tokenize_corpus import TokenizeConfig, tokenize_corpus
from megaspeech.speech.tokenizer import (TokenizerConfig, build_tokenizer, features, save_tokenizer, text_targets,
                                         tokenize_audios)
from megaspeech.speech.tokenizer_training import (SpeechTokenizerRunConfig, SpeechTokenizerTrainConfig,
                                                  SpeechTokenizerTrainingConfig, train)
from megaspeech.speech.tts import synthesize
from tests.helpers.speech_data import librivox_items

TEXTS = ["To be prepared for war is one of the most effectual means of preserving peace.",
         "The people of this country have a right to know.",
         "We must keep our promises to each other.",
         "Freedom is never more than one generation away from extinction."]


def _audio_shards(path):
    with ShardWriter(path, "audio", None) as w:
        for i, t in enumerate(TEXTS):
            a = synthesize(t, ["espeak:en-us", "flite:slt"][i % 2])
            w.write(f"u{i}", {"audio.flac": encode_flac(a), "transcript": t, "duration": len(a) / 16000,
                                "doc": f"generated/u{i}"})


# (tokenizer overrides, train overrides): the paper's 12.5 Hz reading side with cached pre-VQ
# features; the CPU recipe (whole encoder + factorized position-free VQ under the frozen decoder, ASR +
# distillation, utterances packed into longer items)
RECIPES = {"cached_pre_vq": ({}, {"freeze": "pre_vq_and_decoder_embeddings"}),
           "frozen_decoder": ({"unpool": "repeat", "code_dim": 8, "position_free": True},
                              {"freeze": "decoder", "distill_weight": 1.0, "pack_seconds": 8.0}),
           # every augmentation effect on every item, utterances packed: new audio each epoch, still exact;
           # the distillation teacher (the original encoder, frozen) runs per step on the same audio
           "augmented": ({"unpool": "repeat", "code_dim": 8, "position_free": True},
                         {"freeze": "decoder", "distill_weight": 1.0, "pack_seconds": 8.0}),
           # the same with Whisper's layers below the VQ kept: they run per step (augmented audio), no grad;
           # the reader on sampled codes (per-step RNG)
           "augmented_pre_vq_frozen": ({"unpool": "repeat", "code_dim": 8, "position_free": True},
                                       {"freeze": "pre_vq_and_decoder", "code_temperature": 0.5})}
PRE_VQ_FROZEN = ("cached_pre_vq", "augmented_pre_vq_frozen")
ALL_EFFECTS = AugmentConfig(enabled=True, p_speed=1, p_pitch=1, p_reverb=1, p_noise=1, p_telephone=1, p_codec=1)


def _cfg(tmp_path, steps, whisper_cache, recipe="cached_pre_vq"):
    tok_kw, train_kw = RECIPES[recipe]
    tok = TokenizerConfig(split_layer=3, codebook_size=32, whisper_cache=str(whisper_cache), **tok_kw)
    return SpeechTokenizerTrainingConfig(
        run=SpeechTokenizerRunConfig(dir=str(tmp_path / "run"), seed=3),
        tokenizer=tok,
        train=SpeechTokenizerTrainConfig(data=str(tmp_path / "audio"), steps=steps, batch_size=2, lr=1e-4,
                                         warmup_steps=0, min_lr_ratio=1.0, checkpoint_every=2, log_every=1,
                                         **train_kw),
        augment=ALL_EFFECTS if recipe.startswith("augmented") else AugmentConfig())


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_training_resumes_exactly(tmp_path, whisper_cache, whisper, recipe):
    _audio_shards(tmp_path / "audio")
    initial = build_tokenizer(_cfg(tmp_path, 4, whisper_cache, recipe).tokenizer)[0].state_dict()  # fresh weights
    full = train(_cfg(tmp_path, 4, whisper_cache, recipe), log=lambda *_: None)
    ref = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    # the batch's codes are spread over several entries (a collapsed VQ gives perplexity 1.0)
    assert all(x["perplexity"] > 1.5 for x in lines), [x["perplexity"] for x in lines]
    shutil.rmtree(tmp_path / "run")
    train(_cfg(tmp_path, 2, whisper_cache, recipe), log=lambda *_: None)  # "interrupted" after 2 steps
    resumed = train(_cfg(tmp_path, 4, whisper_cache, recipe), log=lambda *_: None)
    # the logged metrics resume exactly too: same losses and code perplexity at every step
    again = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    timing = ("audio_s_per_s", "elapsed_s")
    assert [{k: v for k, v in x.items() if k not in timing} for x in again] == \
        [{k: v for k, v in x.items() if k not in timing} for x in lines]
    got = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert got["step"] == 4 and got["data"] == ref["data"]
    for k, v in ref["model"].items():
        assert torch.equal(v, got["model"][k]), k
    assert resumed["ce"] == full["ce"] and resumed.get("distill") == full.get("distill")
    # what trains: the layers below the VQ only when they are not frozen; the decoder only when it is not
    changed = {k for k, v in ref["model"].items() if not torch.equal(v, initial[k])}
    assert any(k.startswith("post_layers.") for k in changed)
    assert any(k.startswith("vq_in.") for k in changed) == (recipe != "cached_pre_vq")
    assert ("vq_pos" in changed) == (recipe != "cached_pre_vq")
    assert any(k.startswith("pre_layers.") for k in changed) == (recipe not in PRE_VQ_FROZEN)
    assert any(k.startswith("decoder.layers.") for k in changed) == (recipe == "cached_pre_vq")
    assert (tmp_path / "run" / "tokenizer" / "model.pt").is_file()
    trained_on = json.loads((tmp_path / "run" / "tokenizer" / "trained_on.json").read_text())
    assert trained_on["steps"] == 4 and trained_on["data"][0]["samples"] == 4
    assert trained_on["hours"] == pytest.approx(sum(s["duration"] for _, s in open_dataset(tmp_path / "audio")) / 3600)
    assert trained_on["augment"]["enabled"] == recipe.startswith("augmented")


def test_untranscribed_audio_trains_through_distillation(tmp_path, whisper_cache):
    """Recordings without transcripts (a user's unlabelled audio, as launch/ingest_audio.py writes it)
    train with the transcribed data: distillation on every item, CE on the transcribed ones only;
    without distillation, or packed, they are refused naming the data set."""
    _audio_shards(tmp_path / "audio")
    with ShardWriter(tmp_path / "unlabelled", "audio", None) as w:
        for i, t in enumerate(TEXTS):
            a = synthesize(t, "espeak:en-gb")
            w.write(f"n{i}", {"audio.flac": encode_flac(a), "duration": len(a) / 16000, "doc": f"generated/n{i}"})
    data = [str(tmp_path / "audio"), str(tmp_path / "unlabelled")]
    batches = AudioBatches(data, 2, seed=3)
    assert [s["untranscribed"] for s in batches.sources] == [0, 4]
    assert batches.texts([0, 4, 5]) == [TEXTS[0], None, None]
    with pytest.raises(ValueError, match="unlabelled: 4 items have no transcript.*pack_seconds"):
        AudioBatches(data, 2, seed=3, pack_seconds=8.0)
    cfg = _cfg(tmp_path, 4, whisper_cache, "augmented_pre_vq_frozen")
    cfg.train.data = data
    with pytest.raises(ValueError, match="train.distill_weight.*unlabelled: 4 items have no transcript"):
        train(cfg, log=lambda *_: None)
    cfg.train.distill_weight = 1.0
    train(cfg, log=lambda *_: None)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    order = AudioBatches(data, 2, seed=3)
    has_text = [any(t is not None for t in order.texts(order.next_indices())) for _ in range(4)]
    assert not all(has_text) and any(has_text)  # seed 3: some batch is all untranscribed
    assert [("ce" in x) for x in lines] == has_text
    assert all(x["distill"] > 0 for x in lines)
    trained_on = json.loads((tmp_path / "run" / "tokenizer" / "trained_on.json").read_text())
    assert [s["untranscribed"] for s in trained_on["data"]] == [0, 4]


def test_augmented_batches(tmp_path):
    """Augmented training audio: a function of (seed, epoch, item) only; several data sets read as one."""
    _audio_shards(tmp_path / "audio")
    shutil.copytree(tmp_path / "audio", tmp_path / "audio2")
    a = AudioBatches(str(tmp_path / "audio"), 2, seed=3, augment=ALL_EFFECTS)
    b = AudioBatches([str(tmp_path / "audio"), str(tmp_path / "audio2")], 2, seed=3, augment=ALL_EFFECTS)
    clean = AudioBatches(str(tmp_path / "audio"), 2, seed=3)
    assert len(b) == 8 and [s["samples"] for s in b.sources] == [4, 4]
    x0, x1, c = a._load([1], 0)[0][0], b._load([1], 0)[0][0], clean._load([1], 0)[0][0]
    assert np.array_equal(x0, x1) and not np.array_equal(x0[:len(c)], c[:len(x0)])
    assert not np.array_equal(a._load([1], 1)[0][0][:100], x0[:100])  # another epoch, another variant
    audios, texts = a.next()  # next() augments as in its epoch
    assert np.array_equal(audios[0], a._load([a._order(0)[0]], 0)[0][0]) and texts == a.texts(a._order(0)[:2])
    for _ in range(3):  # the trainer's prefetch loads upcoming() while a step trains: it must be what comes next
        idx, ep = a.upcoming()
        assert np.array_equal(idx, a.next_indices()) and ep == a.epoch
    assert a.epoch == 1  # (4 items, batch 2: the third call crossed into the next epoch)


def test_init_from_starts_from_a_checkpoint(tmp_path, whisper_cache, whisper):
    """run.init_from: weights (pre-VQ layers, projection, codebook) come from the checkpoint, the
    frozen pre-VQ features are computed from them (not from Whisper), optimizer/step/data start anew."""
    _audio_shards(tmp_path / "audio")
    train(_cfg(tmp_path, 2, whisper_cache, "frozen_decoder"), log=lambda *_: None)  # trains pre-VQ layers
    src = tmp_path / "run" / "checkpoint.pt"
    a = torch.load(src, weights_only=True)["model"]
    cfg = _cfg(tmp_path, 1, whisper_cache, "frozen_decoder")
    cfg.run.dir, cfg.run.init_from = str(tmp_path / "b"), str(src)
    cfg.train.freeze, cfg.train.distill_weight = "pre_vq_and_decoder", 0.0
    first = train(cfg, log=lambda *_: None)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert b["step"] == 1 and b["data"]["epoch"] == 0 and b["data"]["cursor"] == 2
    fresh = build_tokenizer(cfg.tokenizer)[0].state_dict()
    for k in [k for k in a if k.startswith(("pre_layers.", "conv1.", "conv2."))]:
        assert torch.equal(b["model"][k], a[k]), k  # frozen, loaded
    assert any(not torch.equal(a[k], fresh[k]) for k in a if k.startswith("pre_layers."))
    # the first step's loss is the loaded model's on the first batch
    model, wh = build_tokenizer(cfg.tokenizer)
    model.load_state_dict(a)
    data = AudioBatches(cfg.train.data, 2, cfg.run.seed, cfg.train.pack_seconds)
    audios, texts = data.next()
    model.eval()
    with torch.no_grad():
        pooled, keep = model.pooled(*features(audios, model.conv1.in_channels))
        model.train()
        _, logs, _, _ = model.forward_pooled(pooled, keep, *text_targets(wh, texts))
    assert first["ce"] == pytest.approx(logs["ce"], rel=1e-4)
    cfg.run.init_from = str(tmp_path / "missing.pt")
    cfg.run.dir = str(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        train(cfg, log=lambda *_: None)


def test_packing_concatenates_utterances(tmp_path):
    _audio_shards(tmp_path / "audio")
    plain = AudioBatches(str(tmp_path / "audio"), 1, seed=3)
    packed = AudioBatches(str(tmp_path / "audio"), 1, seed=3, pack_seconds=8.0, gap=0.25)
    assert sorted(i for g in packed.groups for i in g) == [0, 1, 2, 3] and 1 < len(packed) < 4
    audio = {i: plain._load([i])[0][0] for i in range(4)}
    gap = np.zeros(4000, np.float32)
    for g, idx in enumerate(packed.groups):
        audios, texts = packed._load([g])
        want = np.concatenate([x for i in idx for x in (gap, audio[i])][1:])
        assert np.array_equal(audios[0], want) and len(want) <= 8 * 16000
        assert texts == [" ".join(plain.items[i][2] for i in idx)]
    # greedy: no two neighbouring packs would have fitted together
    sizes = [sum(len(audio[i]) for i in g) / 16000 + 0.25 * (len(g) - 1) for g in packed.groups]
    assert all(a + 0.25 + b > 8.0 for a, b in zip(sizes, sizes[1:]))
    with pytest.raises(ValueError, match="pack_seconds"):
        packed.load_state_dict(plain.state_dict())


def test_tokenize_files_and_shards(tmp_path, whisper):
    model, _ = build_tokenizer(TokenizerConfig(split_layer=3, codebook_size=16), whisper)
    torch.manual_seed(0)
    model.init_codebook(torch.randn(64, 384) * 3)
    save_tokenizer(tmp_path / "tok", model, TokenizerConfig(split_layer=3, codebook_size=16), whisper)
    src = tmp_path / "wavs"
    src.mkdir()
    (p0, t0), (p1, _) = librivox_items()[:2]
    shutil.copy(p0, src / "a.wav")
    (src / "a.txt").write_text(t0)
    long = np.concatenate([decode_audio(p0)] * 5)  # 35.5 s: cut into 30 s segments
    sf.write(src / "long.flac", long, 16000)
    (src / "broken.wav").write_bytes(b"RIFF not really a wav")
    _audio_shards(tmp_path / "audio")
    cfg = TokenizeConfig(tokenizer=str(tmp_path / "tok"), inputs=[str(src), str(tmp_path / "audio")],
                         out_dir=str(tmp_path / "out"), files_per_part=2, batch_size=2, workers=2)
    r = tokenize_corpus(cfg)
    assert r["done"] and r["parts"] == 3 and r["samples"] == 2 + len(TEXTS)
    assert [b["source"] for b in r["bad"]] == [str(src / "broken.wav")]
    out = dict(open_dataset(tmp_path / "out", kind="speech"))
    a = decode_audio(p0)
    assert len(out["a"]["codes"]) == -(-len(a) // 1280) and out["a"]["transcript"] == t0
    np.testing.assert_array_equal(out["a"]["codes"], tokenize_audios(model, [a])[0])
    assert len(out["long"]["codes"]) == -(-len(long) // 1280) and "transcript" not in out["long"]
    assert abs(out["long"]["duration"] - len(long) / 16000) < 1e-9
    assert out["u1"]["transcript"] == TEXTS[1] and out["u1"]["source"].endswith(":u1")
    assert out["a"]["doc"] == "files/a" and out["u1"]["doc"] == "generated/u1"  # provenance: file stem, audio's doc
    assert all(v["codes"].max() < 16 for v in out.values())
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.tar")}
    again = tokenize_corpus(cfg)  # resume: every part is finished, nothing is redone
    assert again["skipped_parts"] == 3 and again["samples"] == 0 and again["done"]
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.tar")}
