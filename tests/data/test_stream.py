"""Streaming mixture + packing: determinism, exact and elastic resume, proportions, bad input."""
import io
import json
import tarfile

import numpy as np
import pytest
import torch

from megaspeech.data.loader import build_train_loader
from megaspeech.data.mixture import sample_id
from megaspeech.data.packing import format_sample
from megaspeech.data.shards import Dataset, ShardError
from megaspeech.vocab import Vocab
from tests.helpers.streams import cfg_for, loaders, make_sources, same
from tests.helpers.streams import B, L, V


def all_ids(paths):
    out = set()
    for src, p in enumerate(paths.values()):
        ds = Dataset(p, strict=False)
        for shard, entry in enumerate(ds.shards):
            out |= {sample_id(src, shard, j) for j in range(entry["samples"])}
    return out


def take(loader_iter, n):
    out = []
    for _ in range(n):
        b = next(loader_iter, None)
        if b is None:
            break
        out.append(b)
    return out


def ids_of(batches):
    return [int(x) for b in batches for x in b["sample_ids"].flatten() if x >= 0]


def test_determinism_and_packing_layout(tmp_path):
    paths = make_sources(tmp_path)
    cfg = cfg_for(paths, document_mask=True)
    a, b = take(iter(loaders(cfg, 1)[0]), 10), take(iter(loaders(cfg, 1)[0]), 10)
    same(a, b)
    c = take(iter(loaders(cfg, 1, seed=8)[0]), 10)
    assert any(not torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c))
    for x in a:
        assert x["input_ids"].shape == (B, L) and x["input_ids"].dtype == torch.int64
        assert torch.equal(x["input_ids"][:, 1:], x["labels"][:, :-1])
        lab = x["labels"]
        speech = V.is_speech(lab) | (lab == V.bos_speech_id) | (lab == V.eos_speech_id)
        assert torch.equal(x["modality"], speech.long())
        # a new document id starts exactly at each document's first token
        first = (x["input_ids"][:, 1:] == V.bos_id) | (x["input_ids"][:, 1:] == V.bos_speech_id)
        prev_end = (x["input_ids"][:, :-1] == V.eos_id) | (x["input_ids"][:, :-1] == V.eos_speech_id)
        assert torch.equal(x["doc_ids"].diff(dim=1) == 1, first & prev_end)
    # rows overlap by one token: the last label of a row is the next row's first input
    assert torch.equal(a[0]["input_ids"][1, 0], a[0]["labels"][0, -1])
    assert torch.equal(a[1]["input_ids"][0, 0], a[0]["labels"][1, -1])


def test_format_sample_modalities():
    codes, text = np.array([5, 6, 7]), np.array([9, 8])
    t, m = format_sample("speech", {"codes": codes, "text": text}, V, asr=True)
    assert t.tolist() == [V.bos_speech_id, *(codes + V.speech_offset), V.eos_speech_id, 9, 8, V.eos_id]
    assert m.tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    t, m = format_sample("speech", {"codes": codes, "text": text}, V, asr=False)
    assert t.tolist() == [V.bos_id, 9, 8, V.bos_speech_id, *(codes + V.speech_offset), V.eos_speech_id]
    assert m.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    t, m = format_sample("text", {"tokens": text}, V, asr=False)
    assert t.tolist() == [V.bos_id, 9, 8, V.eos_id] and m.tolist() == [0, 0, 0, 0]


def test_exact_resume_dp2(tmp_path):
    paths = make_sources(tmp_path)
    cfg = cfg_for(paths, epochs=None)
    full = [take(iter(ld), 25) for ld in loaders(cfg, 2)]
    first = loaders(cfg, 2)
    its = [iter(ld) for ld in first]
    heads = [take(it, 11) for it in its]
    states = []
    for ld in first:  # through torch.save/load(weights_only=True), as a checkpoint stores it
        buf = io.BytesIO()
        torch.save(ld.state_dict(), buf)
        buf.seek(0)
        states.append(torch.load(buf, weights_only=True))
    resumed = loaders(cfg, 2)
    for ld, sd in zip(resumed, states):
        ld.load_state_dict(sd)
    tails = [take(iter(ld), 14) for ld in resumed]
    for r in range(2):
        same(full[r], heads[r] + tails[r])
    assert ids_of(full[0]) != ids_of(full[1])


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (2, 3)])
def test_elastic_resume_exactly_once_per_epoch(tmp_path, before, after):
    paths = make_sources(tmp_path)
    cfg = cfg_for(paths, epochs=1)
    first = loaders(cfg, before)
    consumed = [ids_of(take(iter(ld), 6 + 3 * r)) for r, ld in enumerate(first)]  # ranks at different points
    states = [ld.state_dict() for ld in first]
    second = loaders(cfg, after)
    for ld in second:
        ld.load_state_dict(states)
    rest = [ids_of(list(ld)) for ld in second]  # until every source's single epoch is used up
    seen = [i for part in consumed + rest for i in part]
    assert len(seen) == len(set(seen)), "a sample was read twice"
    assert set(seen) == all_ids(paths), "a sample was skipped"


def test_elastic_resume_across_dataloader_worker_counts(tmp_path):
    paths = make_sources(tmp_path)
    ld = loaders(cfg_for(paths, epochs=1, num_workers=2), 1)[0]
    it = iter(ld)
    before = ids_of(take(it, 7))
    sd = ld.state_dict()
    del it
    ld2 = loaders(cfg_for(paths, epochs=1), 1)[0]  # num_workers 2 -> 0: 2 virtual ranks -> 1
    ld2.load_state_dict([sd])
    seen = before + ids_of(list(ld2))
    assert len(seen) == len(set(seen)) and set(seen) == all_ids(paths)


def test_dataloader_workers_match_virtual_ranks_and_resume(tmp_path):
    paths = make_sources(tmp_path)
    cfg = cfg_for(paths, epochs=None, num_workers=2)
    ref = [take(iter(ld), 4) for ld in loaders(cfg_for(paths, epochs=None), 2)]  # dp=2 in-process
    ld = loaders(cfg, 1)[0]
    it = iter(ld)
    head = take(it, 5)
    sd = ld.state_dict()
    del it
    ld2 = loaders(cfg, 1)[0]
    ld2.load_state_dict(sd)
    tail = take(iter(ld2), 3)
    # worker j runs virtual rank j; batches come round-robin: r0, r1, r0, r1, ...
    same(head + tail, [ref[i % 2][i // 2] for i in range(8)])


@pytest.mark.parametrize("unit", ["samples", "tokens"])
def test_mixture_proportions(tmp_path, unit):
    paths = make_sources(tmp_path)
    w = (0.3, 0.5, 0.2)
    cfg = cfg_for(paths, epochs=None, weights=w, mix_unit=unit)
    ld = build_train_loader(cfg, V, seq_len=256, micro_batch=8, dp_rank=0, dp_size=1, seed=1)
    it = iter(ld)
    while ld.stats()["data/samples"] < 10_000:
        for _ in range(10):
            next(it)
    st = ld.stats()
    for name, weight in zip(paths, w):
        share = st[f"data/{unit}/{name}"] / st[f"data/{unit}"]
        assert abs(share - weight) < 0.01, (name, share, weight)


def _rewrite_manifest_entry(ds_dir, name):
    import hashlib
    m = json.loads((ds_dir / "manifest.json").read_text())
    for s in m["shards"]:
        if s["name"] == name:
            data = (ds_dir / name).read_bytes()
            s["bytes"], s["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (ds_dir / "manifest.json").write_text(json.dumps(m))


def _single(tmp_path, n=18):
    paths = make_sources(tmp_path, n=(n, 1, 1))
    return {"text": paths["text"]}


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing_key", "float_tokens", "pickle"])
def test_bad_input_policies(tmp_path, damage):
    paths = _single(tmp_path)
    d = paths["text"]
    victim = "shard-000001.tar"
    data = bytearray((d / victim).read_bytes())
    if damage == "flip":
        data[700] ^= 0xFF
    elif damage == "truncate":
        data = data[:1500]
    else:  # a well-formed tar listed correctly in the manifest but with a bad sample
        members = []
        with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tf:
            for m in tf:
                members.append((m.name, tf.extractfile(m).read()))
        key = members[0][0].split(".")[0]
        if damage == "missing_key":
            members = [(f"{key}.tokenz.npy" if n == f"{key}.tokens.npy" else n, b) for n, b in members]
        elif damage == "float_tokens":
            buf = io.BytesIO()
            np.save(buf, np.ones(4, np.float32))
            members = [(n, buf.getvalue() if n == f"{key}.tokens.npy" else b) for n, b in members]
        else:
            members.insert(1, (f"{key}.extra.pyd", b"\x80\x04K\x01."))
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tf:
            for n, b in members:
                info = tarfile.TarInfo(n)
                info.size = len(b)
                tf.addfile(info, io.BytesIO(b))
        data = out.getvalue()
    (d / victim).write_bytes(bytes(data))
    if damage not in ("flip", "truncate"):
        _rewrite_manifest_entry(d, victim)
    cfg = cfg_for(paths, epochs=1, weights=(1.0,), shuffle=False)
    expect = "truncated" if damage == "truncate" else {"flip": "sha256", "missing_key": "missing field 'tokens'",
                                                       "float_tokens": "1-D integer", "pickle": "pickle"}[damage]
    with pytest.raises(ShardError) as err:
        list(loaders(cfg, 1)[0])
    assert victim in str(err.value) and expect in str(err.value), str(err.value)
    cfg.on_error = "skip"
    ld = loaders(cfg, 1)[0]
    got = set(ids_of(list(ld)))
    st = ld.stats()
    whole_shard = damage in ("flip", "truncate")
    assert st["data/skipped_shards"] == int(whole_shard)
    assert st["data/skipped_samples"] == (6 if whole_shard else 1)
    lost = {sample_id(0, 1, j) for j in (range(6) if whole_shard else [0])}
    assert got == all_ids(paths) - lost


def test_missing_shard_and_vocab_fail_at_start(tmp_path):
    paths = _single(tmp_path)
    cfg = cfg_for(paths, weights=(1.0,))
    with pytest.raises(Exception, match="vocab.speech_size"):
        build_train_loader(cfg, Vocab(text_size=1000, speech_size=256), seq_len=L, micro_batch=B, dp_rank=0,
                           dp_size=1, seed=0)
    (paths["text"] / "shard-000002.tar").unlink()
    with pytest.raises(ShardError, match=r"shard-000002\.tar: listed in .* but missing"):
        loaders(cfg, 1)


def test_loss_modalities_masks_other_labels():
    """data.loss_modalities=[speech] (text-to-token training): only speech labels count."""
    import numpy as np

    from megaspeech.data.packing import Packer
    docs = iter([(np.arange(1, 6), np.array([0, 0, 1, 1, 1], np.uint8), 0),
                 (np.arange(6, 12), np.array([0, 0, 0, 1, 1, 1], np.uint8), 1)])
    batch = Packer(8, 1, 0, False, (1,)).next_batch(lambda: next(docs, None))
    assert batch["loss_mask"].tolist() == (batch["modality"] == 1).float().tolist()
    assert batch["loss_mask"].sum() == 4
