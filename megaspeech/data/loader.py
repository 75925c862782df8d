"""The one data-loader interface the trainer consumes.

`build_train_loader(...)` returns an object that is iterable (yields micro-batches forever) and has
`state_dict()` / `load_state_dict()` giving the exact position after the last batch yielded.

A micro-batch is a dict of tensors, all [micro_batch, seq_len] unless noted:
  input_ids  int64   token ids fed to the model
  labels     int64   next-token targets (input_ids shifted by one)
  loss_mask  float32 1.0 where the position counts in the loss
  modality   int64   0 text / 1 speech, per label position (per-modality loss)
  doc_ids    int64   optional: document index inside the packed row (document attention mask)
  sample_ids int64   [micro_batch, M]: ids of the samples packed into each row, -1 padded

Both loaders have `state_dict()` / `load_state_dict(sd)`. For `shards`, sd is this rank's own state
(same DP size) or the list of every DP rank's state (required when the DP size or
data.num_workers changed: elastic resume, each sample still read once per epoch), and
`stats()` returns counters for the metrics log (samples/tokens per source, skipped shards/samples).
A `shards` loader whose sources all have finite `epochs` stops iterating when they are used up
(the last batch is padded, loss_mask 0 on the padding).
"""
from __future__ import annotations

from megaspeech.config.data import DataConfig
from megaspeech.vocab import Vocab


def build_train_loader(cfg: DataConfig, vocab: Vocab, *, seq_len: int, micro_batch: int,
                       dp_rank: int, dp_size: int, seed: int):
    if cfg.kind == "synthetic":
        from megaspeech.data.toy_stream import SyntheticLoader
        return SyntheticLoader(vocab, seq_len, micro_batch, dp_rank, dp_size, seed, cfg.speech_fraction,
                               cfg.document_mask)
    if cfg.kind == "shards":
        from megaspeech.data.stream import ShardLoader
        return ShardLoader(cfg, vocab, seq_len=seq_len, micro_batch=micro_batch, dp_rank=dp_rank,
                           dp_size=dp_size, seed=seed)
    raise ValueError(f"data.kind={cfg.kind!r}: choose synthetic or shards")


def data_plan(cfg: DataConfig, seed: int) -> dict:
    """What a saved data position means (stored in a checkpoint's meta.json, compared on resume): the
    seed (shard and sample order depend on it), the loader kind and, per source, its identity (the
    resolved path and the sha256 of its manifest.json, which lists every shard's sha256), weight and
    epochs. Not the layout (DP size, workers): a position carries over to any of those."""
    import hashlib

    from megaspeech.config.data import is_remote
    from megaspeech.data.remote import Location, io_settings
    from megaspeech.data.shard_format import ShardError
    plan = {"seed": seed, "kind": cfg.kind, "sources": []}
    if cfg.kind == "synthetic":
        plan["speech_fraction"] = cfg.speech_fraction
    for s in cfg.sources if cfg.kind == "shards" else []:
        path = s.resolved_path()
        try:  # a URL's manifest is read from the same place as its shards
            loc = Location(path, io_settings(cfg))
            digest = hashlib.sha256(loc.read("manifest.json")).hexdigest()
        except (OSError, ShardError):
            digest = None  # named by the loader when it opens the source
        plan["sources"].append({"name": s.name, "path": str(path if is_remote(str(path)) else path.resolve()),
                                "manifest_sha256": digest, "weight": s.weight, "epochs": s.epochs})
    return plan


def plan_changes(saved: dict, now: dict) -> list[str]:
    """How the data plan `now` differs from the `saved` one, one phrase per change ([] if the saved
    position applies). A source is the same dataset if its manifest checksum is (a moved dataset
    is the same); without a saved checksum, if its path is."""
    out = []
    if saved.get("seed") != now["seed"]:
        out.append(f"run.seed {saved.get('seed')} -> {now['seed']} (the shard and sample order depend on it)")
    if saved.get("kind", now["kind"]) != now["kind"]:
        out.append(f"data.kind {saved.get('kind')} -> {now['kind']}")
    if saved.get("speech_fraction", now.get("speech_fraction")) != now.get("speech_fraction"):
        out.append(f"data.speech_fraction {saved.get('speech_fraction')} -> {now.get('speech_fraction')}")
    old = {s["name"]: s for s in saved.get("sources", [])}
    new = {s["name"]: s for s in now["sources"]}
    for name in new.keys() - old.keys():
        out.append(f"source {name!r} added ({new[name]['path']})")
    for name in old.keys() - new.keys():
        out.append(f"source {name!r} removed (was {old[name]['path']})")
    for name in sorted(old.keys() & new.keys()):
        a, b = old[name], new[name]
        if a.get("manifest_sha256") and b.get("manifest_sha256"):
            if a["manifest_sha256"] != b["manifest_sha256"]:
                out.append(f"source {name!r} is another dataset: {a['path']} (manifest sha256 "
                           f"{a['manifest_sha256'][:12]}) -> {b['path']} ({b['manifest_sha256'][:12]})")
        elif a.get("path") != b["path"]:
            out.append(f"source {name!r} path {a.get('path')} -> {b['path']}")
        for k in ("weight", "epochs"):
            if k in a and a[k] != b[k]:
                out.append(f"source {name!r} {k} {a[k]} -> {b[k]}")
    if [s["name"] for s in saved.get("sources", [])] != [s["name"] for s in now["sources"]] and not \
            (new.keys() ^ old.keys()):
        out.append("data.sources reordered")
    return out


def plan_from_config(config: dict) -> dict:
    """The data plan of a checkpoint saved before plans were stored, from its meta.json config (no
    manifest checksums: the source paths are compared instead)."""
    from megaspeech.config.data import is_remote
    from megaspeech.fs import resolve_path
    data = config.get("data", {})
    plan = {"seed": config.get("run", {}).get("seed"), "kind": data.get("kind"), "sources": []}
    if data.get("kind") == "synthetic":
        plan["speech_fraction"] = data.get("speech_fraction")
    for s in data.get("sources", []) if data.get("kind") == "shards" else []:
        path = s["path"] if is_remote(s["path"]) else str(resolve_path(s["path"]).resolve())
        plan["sources"].append({"name": s["name"], "path": path,
                                "weight": s["weight"], "epochs": s["epochs"]})
    return plan
