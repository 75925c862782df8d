"""`data.kind=shards`: weighted streaming mixture of shard datasets, packed into micro-batches.

Ranks. With `data.num_workers = n` DataLoader workers, each DP rank runs n independent
pipelines; pipeline j of DP rank r is virtual rank v = r*n + j of V = dp_size*n (n=0 counts as 1),
and the DataLoader returns their batches round-robin. Everything below is per virtual rank:
`SourceStream`s (one per source), the `Mixer`, the `Packer`.

State. `state_dict()` of a loader holds the exact state of its virtual ranks after the last batch
it yielded, plus which one yields next. `load_state_dict(sd)` takes this rank's own dict (same
dp_size and num_workers: exact continuation) or the list of every DP rank's dicts (any dp_size or
num_workers: `merge_source_states` hands every not-yet-read shard slot and every partly read slot
to exactly one new virtual rank, so each sample is read once per epoch).
"""
from __future__ import annotations

import numpy as np
import torch

from megaspeech.config.data import MODALITY_IDS, DataConfig
from megaspeech.data.mixture import Mixer, SourceStream, merge_source_states
from megaspeech.data.packing import Packer, format_sample, unit_hash
from megaspeech.data.remote import io_settings
from megaspeech.data.shards import Dataset
from megaspeech.vocab import Vocab

STATS = ("samples", "tokens", "skipped_samples", "skipped_shards")


def open_sources(cfg: DataConfig, vocab: Vocab) -> list[Dataset]:
    """Validate every source at start: manifest, vocab layout, every listed shard present (where the
    storage lists: a local dir, S3; over HTTP a shard is checked when it is opened)."""
    return [Dataset(s.resolved_path(), vocab, strict=cfg.on_error == "raise", io_cfg=io_settings(cfg))
            for s in cfg.sources]


class RankPipeline:
    """Mixture + packing for one virtual rank; deterministic given (seed, rank, world, state)."""

    def __init__(self, cfg: DataConfig, vocab: Vocab, datasets: list[Dataset], *, seq_len: int,
                 micro_batch: int, rank: int, world: int, seed: int):
        self.cfg, self.vocab, self.datasets, self.seed = cfg, vocab, datasets, seed
        self.stats = {k: 0 for k in STATS}
        self.streams = [SourceStream(ds, i, seed=seed, rank=rank, world=world, epochs=s.epochs,
                                     shuffle=cfg.shuffle, open_shards=cfg.open_shards, on_error=cfg.on_error,
                                     verify=cfg.verify_checksums, stats=self.stats, shuffle_buffer=cfg.shuffle_buffer,
                                     read_ahead=int(cfg.read_ahead_mb * (1 << 20)))
                        for i, (s, ds) in enumerate(zip(cfg.sources, datasets))]
        self.mixer = Mixer([s.weight for s in cfg.sources])
        self.packer = Packer(seq_len, micro_batch, vocab.pad_id, cfg.document_mask,
                             tuple(MODALITY_IDS[m] for m in cfg.loss_modalities))
        self.active = np.ones(len(self.streams), bool)
        self.per_source = np.zeros((len(self.streams), 2), np.int64)  # samples, tokens

    def _draw(self):
        while self.active.any():
            i = self.mixer.pick(self.active)
            x = self.streams[i].next()
            if x is None:
                self.active[i] = False
                continue
            sid, epoch, sample = x
            kind = self.datasets[i].kind
            asr = kind == "speech" and unit_hash(self.seed, sid, epoch) < self.cfg.asr_fraction
            toks, mod = format_sample(kind, sample, self.vocab, asr)
            self.mixer.add(i, len(toks) if self.cfg.mix_unit == "tokens" else 1)
            self.per_source[i] += (1, len(toks))
            return toks, mod, sid
        return None

    def next_batch(self):
        return self.packer.next_batch(self._draw)

    def state_dict(self) -> dict:
        return {"sources": [s.state_dict() for s in self.streams], "mixer": self.mixer.used.tolist(),
                "packer": self.packer.state_dict(), "stats": dict(self.stats),
                "per_source": self.per_source.tolist()}

    def load_state_dict(self, sd: dict) -> None:
        for s, st in zip(self.streams, sd["sources"], strict=True):
            s.load_state_dict(st)
        self.mixer.used = np.asarray(sd["mixer"], np.float64)
        self.packer.load_state_dict(sd["packer"])
        self.stats.update(sd["stats"])
        self.per_source = np.asarray(sd["per_source"], np.int64).reshape(len(self.streams), 2)
        self.active[:] = True


def merge_rank_states(old: list[dict], new_world: int) -> list[dict]:
    """States of every old virtual rank (in rank order) -> states for `new_world` virtual ranks."""
    n_src = len(old[0]["sources"])
    per_src = [merge_source_states([o["sources"][i] for o in old], new_world) for i in range(n_src)]
    mixer = np.mean([o["mixer"] for o in old], axis=0).tolist()
    new = []
    for r in range(new_world):
        mine = old[r::new_world]  # old rank r' goes to new rank r' % new_world: carried tokens, counters
        tok, mod, starts = [], [], []
        for o in mine:
            p = o["packer"]
            starts += [[len(tok) + pos, sid] for pos, sid in p["starts"]]
            tok += p["tokens"]
            mod += p["modality"]
        stats = {k: sum(o["stats"][k] for o in mine) for k in STATS}
        per_source = np.sum([o["per_source"] for o in mine], axis=0).tolist() if mine else [[0, 0]] * n_src
        new.append({"sources": [per_src[i][r] for i in range(n_src)], "mixer": mixer, "stats": stats,
                    "packer": {"tokens": tok, "modality": mod, "starts": starts, "done": False},
                    "per_source": per_source})
    return new


class _WorkerStreams(torch.utils.data.IterableDataset):
    """DataLoader side: worker j runs virtual rank (rotation + j) % n and attaches its state."""

    def __init__(self, loader: "ShardLoader"):
        self.loader = loader

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        ld = self.loader
        j = (ld.next_worker + (info.id if info is not None else 0)) % ld.n_workers
        pipe = ld._pipeline(j)
        while (batch := pipe.next_batch()) is not None:
            yield batch, j, pipe.state_dict()


class ShardLoader:
    """The `data.kind=shards` loader (see megaspeech/data/loader.py for the batch contract)."""

    def __init__(self, cfg: DataConfig, vocab: Vocab, *, seq_len: int, micro_batch: int, dp_rank: int,
                 dp_size: int, seed: int):
        self.cfg, self.vocab, self.seq_len, self.micro_batch = cfg, vocab, seq_len, micro_batch
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.n_workers = max(1, cfg.num_workers)
        self.world = dp_size * self.n_workers
        self.datasets = open_sources(cfg, vocab)
        self.vstates: dict[int, dict | None] = {j: None for j in range(self.n_workers)}
        self.next_worker = 0
        self._live: RankPipeline | None = None  # in-process pipeline (num_workers=0)

    def _pipeline(self, j: int) -> RankPipeline:
        p = RankPipeline(self.cfg, self.vocab, self.datasets, seq_len=self.seq_len, micro_batch=self.micro_batch,
                         rank=self.dp_rank * self.n_workers + j, world=self.world, seed=self.seed)
        if self.vstates[j] is not None:
            p.load_state_dict(self.vstates[j])
        return p

    def __iter__(self):
        if self.cfg.num_workers == 0:
            if self._live is None:
                self._live = self._pipeline(0)
            while (batch := self._live.next_batch()) is not None:
                yield batch
            return
        dl = torch.utils.data.DataLoader(_WorkerStreams(self), batch_size=None, num_workers=self.cfg.num_workers,
                                         prefetch_factor=2)
        for batch, j, state in dl:
            self.vstates[j] = state
            self.next_worker = (j + 1) % self.n_workers
            yield batch

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        vs = dict(self.vstates)
        if self._live is not None:
            vs[0] = self._live.state_dict()
        return {"kind": "shards", "version": 1, "dp_rank": self.dp_rank, "dp_size": self.dp_size,
                "num_workers": self.n_workers, "next_worker": self.next_worker,
                "sources": [s.name for s in self.cfg.sources],
                "vstates": {str(self.dp_rank * self.n_workers + j): v for j, v in vs.items()}}

    def load_state_dict(self, sd: dict | list[dict]) -> None:
        """sd: this rank's own state_dict (same dp_size/num_workers) or the list of all DP ranks' ones."""
        sds = sd if isinstance(sd, list) else [sd]
        for s in sds:
            if s.get("kind") != "shards" or s.get("sources") != [x.name for x in self.cfg.sources]:
                raise ValueError(f"data state is for sources {s.get('sources')} but data.sources are "
                                 f"{[x.name for x in self.cfg.sources]}; resume with the same data.sources")
        old_world = sds[0]["dp_size"] * sds[0]["num_workers"]
        allv = {int(v): st for s in sds for v, st in s["vstates"].items()}
        mine = [self.dp_rank * self.n_workers + j for j in range(self.n_workers)]
        self._live = None
        if old_world == self.world and all(v in allv for v in mine):
            self.vstates = {j: allv[v] for j, v in enumerate(mine)}
            own = [s for s in sds if s["dp_rank"] == self.dp_rank]
            self.next_worker = own[0]["next_worker"] if own else 0
            return
        if sorted(allv) != list(range(old_world)):
            raise ValueError(f"data was consumed with dp_size x workers = {old_world}, now {self.world}: pass the "
                             f"list of every data-parallel rank's loader state to load_state_dict")
        for v in allv:
            if allv[v] is None:  # a virtual rank that never yielded a batch: its fresh state
                allv[v] = RankPipeline(self.cfg, self.vocab, self.datasets, seq_len=self.seq_len,
                                       micro_batch=self.micro_batch, rank=v, world=old_world,
                                       seed=self.seed).state_dict()
        new = merge_rank_states([allv[v] for v in range(old_world)], self.world)
        self.vstates = {j: new[v] for j, v in enumerate(mine)}
        self.next_worker = 0

    def stats(self) -> dict:
        """Counters for the metrics log (cumulative, this DP rank): data/samples, data/tokens (after
        formatting), per source data/samples/<name> and data/tokens/<name>, data/skipped_samples,
        data/skipped_shards (on_error=skip)."""
        if self._live is not None:
            views = [(self._live.stats, self._live.per_source.tolist())]
        else:
            views = [(v["stats"], v["per_source"]) for v in self.vstates.values() if v is not None]
        names = [s.name for s in self.cfg.sources]
        out = {"data/samples": 0, "data/tokens": 0, "data/skipped_samples": 0, "data/skipped_shards": 0}
        out.update({f"data/{k}/{n}": 0 for n in names for k in ("samples", "tokens")})
        for st, per_source in views:
            for k in ("skipped_samples", "skipped_shards"):
                out[f"data/{k}"] += st[k]
            for name, (n, t) in zip(names, per_source):
                out[f"data/samples/{name}"] += n
                out[f"data/tokens/{name}"] += t
                out["data/samples"] += n
                out["data/tokens"] += t
        return out
