"""Per-source sample streams over shard "slots", their exact elastic state, and the mixer.

Slots. A source with N shards is read as the sequence of slots q = 0, 1, 2, ...: slot q is shard
perm_e[q % N] of epoch e = q // N (perm_e a permutation drawn from (seed, source, e)); a slot's
samples are read in an order drawn from (seed, source, e, shard) (`within_order`: a full
permutation up to data.shuffle_buffer samples, a bounded-window shuffle beyond, so the tar is read
as it streams holding at most ~shuffle_buffer samples). With `epochs` set, slots q >= epochs * N
do not exist. Nothing here depends on the number of ranks, nor on where the shards are stored.

Streaming. An open slot is read by an `_OpenShard`: a ShardStream (megaspeech.data.remote: a
background thread with a bounded read-ahead buffer, retries, size and sha256 checks) and a tar
iterator; the next slot this rank will open is started ahead. Its position is the count c of
samples used: a resumed slot streams its shard from the start again and drops the samples whose
place in the order is < c, so the resumed order is the same.

Assignment. The slots not yet handed out are R = (q >= G and q not in E), a cursor G plus a finite
set E. Rank r of W takes R[r], R[r + W], R[r + 2W], ... (k of them so far) and keeps up to
`open_shards` of them open, alternating between them, with a count c of samples read from each.

Elastic resume (`merge_source_states`). From every old rank's state the handed-out slots are
[0, G) | E | {R[r + W i] : i < k_r}; the new (G', E') describe the rest, and each open, partly read
slot moves with its count c to exactly one new rank. So every slot is read by one rank and every
sample once per epoch, whatever the number of ranks before and after.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from megaspeech.data.remote import ShardStream
from megaspeech.data.shards import Dataset, ShardError, check_sample, decode_fields, iter_tar

log = logging.getLogger(__name__)
SHARD_BITS, INDEX_BITS = 24, 24  # sample id = source << 48 | shard << 24 | index in shard


def sample_id(source: int, shard: int, index: int) -> int:
    return (source << (SHARD_BITS + INDEX_BITS)) | (shard << INDEX_BITS) | index


def within_order(seed: int, src: int, epoch: int, shard: int, n: int, buffer: int) -> np.ndarray:
    """The order a slot's n samples are used in: a permutation drawn from (seed, source, epoch, shard);
    for n > buffer, argsort(i + U_i * buffer): sample i moves by less than `buffer` places, so the
    sample at position c is among the first c + buffer of the file."""
    rng = np.random.default_rng([seed, src, epoch, shard])
    if n <= buffer:
        return rng.permutation(n)
    return np.argsort(np.arange(n) + rng.random(n) * buffer, kind="stable")


class _OpenShard:
    """One slot being streamed: samples come off the tar in file order and wait in `pending` until
    their turn in `order` (at most ~buffer of them); the ones before the resume position are dropped."""

    def __init__(self, stream: ShardStream, where: str, order: np.ndarray):
        self.stream, self.where, self.order, self.n = stream, where, order, len(order)
        self.pos = np.empty(self.n, np.int64)
        self.pos[order] = np.arange(self.n)
        self.it = iter_tar(stream, where)
        self.next_j = 0
        self.pending: dict[int, tuple[str, dict]] = {}

    def take(self, c: int) -> tuple[int, str, dict]:
        """(index in shard, key, raw fields) of the sample at position c of the order."""
        j = int(self.order[c])
        while j not in self.pending:
            item = next(self.it, None)
            if item is None:
                raise ShardError(f"{self.where}: {self.next_j} samples but the manifest says {self.n} (the shard "
                                 f"changed under the run?); re-create the shard")
            i, self.next_j = self.next_j, self.next_j + 1
            if i >= self.n:
                break
            if self.pos[i] >= c:  # earlier positions were used before a resume
                self.pending[i] = item
        if j not in self.pending:
            raise ShardError(f"{self.where}: more samples than the {self.n} the manifest says (the shard changed "
                             f"under the run?); re-create the shard")
        key, fields = self.pending.pop(j)
        return j, key, fields

    def finish(self) -> None:
        """After the last sample: read to the end (samples used before a resume may remain), where the
        stream checks size and sha256."""
        for _ in self.it:
            self.next_j += 1
        if self.next_j > self.n:
            raise ShardError(f"{self.where}: more samples than the {self.n} the manifest says (the shard changed "
                             f"under the run?); re-create the shard")

    def close(self) -> None:
        self.stream.close()


def nth_free(G: int, E: np.ndarray, idx):
    """The idx-th (0-based) element of {q >= G} minus the sorted set E (all E >= G)."""
    e = np.asarray(E, dtype=np.int64) - G - np.arange(len(E))  # free positions before each excluded one
    return G + np.asarray(idx, dtype=np.int64) + np.searchsorted(e, idx, side="right")


class SourceStream:
    """Samples of one source for one (virtual) rank, with an exact `state_dict()`."""

    def __init__(self, ds: Dataset, src: int, *, seed: int, rank: int, world: int, epochs: int | None,
                 shuffle: bool, open_shards: int, on_error: str, verify: bool, stats: dict,
                 shuffle_buffer: int = 1024, read_ahead: int = 16 << 20):
        self.ds, self.src, self.seed, self.shuffle = ds, src, seed, shuffle
        self.n_shards = len(ds.shards)
        if self.n_shards == 0:
            raise ShardError(f"{ds.path}: the manifest lists no shard; re-run the prep tool or drop the source")
        if self.n_shards >= 1 << SHARD_BITS or max(s["samples"] for s in ds.shards) >= 1 << INDEX_BITS:
            raise ShardError(f"{ds.path}: sample ids need < 2^24 shards and < 2^24 samples per shard; "
                             f"re-shard with a larger max_bytes or split the dataset")
        self.limit = math.inf if epochs is None else epochs * self.n_shards
        self.open_shards, self.on_error, self.verify, self.stats = open_shards, on_error, verify, stats
        self.G, self.E, self.rank, self.world, self.k = 0, [], rank, world, 0
        self.open: list[list[int]] = []  # [slot q, samples consumed]
        self.d = 0  # round-robin counter over open slots
        self._perm: dict[int, np.ndarray] = {}
        self.shuffle_buffer, self.read_ahead = shuffle_buffer, read_ahead
        self._loaded: dict[int, _OpenShard] = {}
        self._ahead: dict[int, ShardStream] = {}  # streams started for slots not open yet
        self._ahead_k = -1
        self.barren = 0  # slots finished since the last usable sample (a full pass of them: give up)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"G": self.G, "E": list(self.E), "rank": self.rank, "world": self.world, "k": self.k,
                "open": [list(o) for o in self.open], "d": self.d}

    def load_state_dict(self, sd: dict) -> None:
        self.G, self.E, self.k, self.d = sd["G"], list(sd["E"]), sd["k"], sd["d"]
        self.rank, self.world = sd["rank"], sd["world"]
        self.open = [list(o) for o in sd["open"]]
        self.close()

    def close(self) -> None:
        """Stop every background read (open and read-ahead slots)."""
        for x in [*self._loaded.values(), *self._ahead.values()]:
            x.close()
        self._loaded, self._ahead, self._ahead_k = {}, {}, -1

    # ------------------------------------------------------------------ slots
    def slot(self, q: int) -> tuple[int, int]:
        """Slot -> (epoch, shard index)."""
        e, i = divmod(q, self.n_shards)
        if not self.shuffle:
            return e, i
        perm = self._perm.get(e)
        if perm is None:
            if len(self._perm) > 4:  # open slots span at most a few epochs
                self._perm.pop(min(self._perm))
            perm = self._perm[e] = np.random.default_rng([self.seed, self.src, e]).permutation(self.n_shards)
        return e, int(perm[i])

    def _next_slot(self) -> int | None:
        q = int(nth_free(self.G, self.E, self.rank + self.world * self.k))
        if q >= self.limit:
            return None
        self.k += 1
        return q

    def _stream(self, q: int) -> ShardStream:
        stream = self._ahead.pop(q, None)
        if stream is None:
            entry = self.ds.shards[self.slot(q)[1]]
            stream = ShardStream(self.ds.location, entry["name"], entry["bytes"],
                                 entry["sha256"] if self.verify else None, read_ahead=self.read_ahead,
                                 verify_first=self.ds.location.kind == "local")
        return stream

    def _read_ahead(self) -> None:
        """Start streaming the slot this rank opens next, so that opening it does not wait."""
        nxt = int(nth_free(self.G, self.E, self.rank + self.world * self.k))
        for q in [q for q in self._ahead if q != nxt]:
            self._ahead.pop(q).close()
        if nxt < self.limit and nxt not in self._ahead and self.ds.shards[self.slot(nxt)[1]]["samples"]:
            self._ahead[nxt] = self._stream(nxt)

    def _load(self, q: int) -> _OpenShard | None:
        """The open shard of slot q, or None for a shard with no sample (skipped and counted)."""
        if q in self._loaded:
            return self._loaded[q]
        e, shard = self.slot(q)
        entry = self.ds.shards[shard]
        n = entry["samples"]
        if n == 0:  # nothing to read (a valid but empty tar): counted, never opened
            log.warning("skipping empty shard %s", self.ds.location.url(entry["name"]))
            self.stats["skipped_shards"] += 1
            return None
        order = within_order(self.seed, self.src, e, shard, n, self.shuffle_buffer) if self.shuffle else np.arange(n)
        self._loaded[q] = _OpenShard(self._stream(q), self.ds.location.url(entry["name"]), order)
        return self._loaded[q]

    def _drop(self, i: int, q: int, c: int, err: ShardError) -> None:
        """on_error=skip: the rest of slot q's shard is skipped (counted, logged once per shard)."""
        log.warning("skipping shard: %s", err)
        sh = self._loaded.pop(q, None)
        if sh is not None:
            sh.close()
        self.stats["skipped_shards"] += 1
        self.stats["skipped_samples"] += self.ds.shards[self.slot(q)[1]]["samples"] - c
        del self.open[i]
        self._finished_slot()

    def next(self):
        """(sample_id, epoch, sample dict) or None when this rank has no slot left."""
        while True:
            while len(self.open) < self.open_shards:
                q = self._next_slot()
                if q is None:
                    break
                self.open.append([q, 0])
                if self.ds.shards[self.slot(q)[1]]["samples"]:
                    self._load(q)  # start its stream now
            if not self.open:
                return None
            if self._ahead_k != self.k:  # a slot was opened: start the one after it
                self._ahead_k = self.k
                self._read_ahead()
            i = self.d % len(self.open)
            self.d += 1
            q, c = self.open[i]
            sh = self._load(q)
            if sh is None:
                del self.open[i]
                self._finished_slot()
                continue
            try:
                j, key, fields = sh.take(c)
                last = c + 1 == sh.n
                if last:
                    sh.finish()
            except ShardError as err:
                if self.on_error == "raise":
                    raise
                self._drop(i, q, c, err)
                continue
            e, shard = self.slot(q)
            self.open[i][1] += 1
            if last:
                del self.open[i]
                self._loaded.pop(q).close()
            try:
                sample = decode_fields(key, fields, sh.where)
                check_sample(self.ds.kind, sample, f"{sh.where} key {key!r}", self.ds.vocab)
            except ShardError as err:
                if self.on_error == "raise":
                    raise
                log.warning("skipping sample: %s", err)
                self.stats["skipped_samples"] += 1
                if last:
                    self._finished_slot()
                continue
            self.barren = 0
            return sample_id(self.src, shard, j), e, sample

    def _finished_slot(self) -> None:
        """Without this, a source whose every shard is skipped (on_error=skip, or all empty) spins forever."""
        self.barren += 1
        if self.barren >= self.n_shards:
            raise ShardError(
                f"{self.ds.path}: the last {self.barren} shards read (a full pass over its {self.n_shards}) yielded "
                f"no usable sample ({self.stats['skipped_shards']} shards and {self.stats['skipped_samples']} "
                f"samples skipped so far, see the warnings above); re-create the dataset or remove the source")


def merge_source_states(old: list[dict], new_world: int) -> list[dict]:
    """States of all old ranks of one source -> states of `new_world` new ranks (see module doc)."""
    G, E, W = old[0]["G"], old[0]["E"], old[0]["world"]
    if len(old) != W or any((s["G"], s["E"], s["world"], s["rank"]) != (G, E, W, r) for r, s in enumerate(old)):
        raise ValueError("source states to merge must come from all ranks of one run (same G/E/world, ranks 0..W-1)")
    handed = [np.asarray(E, dtype=np.int64)]
    for r, s in enumerate(old):
        if s["k"]:
            handed.append(nth_free(G, E, r + W * np.arange(s["k"])))
    handed = np.unique(np.concatenate(handed))
    # new cursor: first q >= G not handed out; everything below it is handed out
    above = handed - G - np.arange(len(handed))  # 0 while handed is contiguous from G
    run = int(np.argmax(above != 0)) if (above != 0).any() else len(handed)
    G2 = G + run
    E2 = [int(x) for x in handed[run:]]
    partial = sorted((o for s in old for o in s["open"]), key=lambda o: o[0])
    return [{"G": G2, "E": E2, "rank": r, "world": new_world, "k": 0, "d": 0,
             "open": [list(o) for o in partial[r::new_world]]} for r in range(new_world)]


class Mixer:
    """Deterministic weighted interleaving: always draw from the active source furthest below its
    share (as Megatron's blending index does), so proportions hold over any window to within one
    sample. `used` counts tokens or samples per source."""

    def __init__(self, weights: list[float]):
        w = np.asarray(weights, dtype=np.float64)
        self.w = w / w.sum()
        self.used = np.zeros(len(w))

    def pick(self, active: np.ndarray) -> int:
        score = np.where(active, (self.used + 1e-9) / self.w, np.inf)
        return int(np.argmin(score))

    def add(self, i: int, amount: float) -> None:
        self.used[i] += amount
