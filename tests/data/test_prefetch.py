"""The background prefetcher: same batches as reading in the step, and exact resume from the state
of the *consumed* steps while the loader itself has read further ahead."""
import io
import time

import pytest
import torch

from megaspeech.data.prefetch import Prefetcher, read_step
from tests.helpers.streams import cfg_for, loaders, make_sources, same

ACCUM = 2


def roundtrip(sd):  # as a checkpoint stores it: torch.save / load(weights_only=True)
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_prefetch_resume_uses_consumed_state(tmp_path, num_workers):
    paths = make_sources(tmp_path)
    cfg = cfg_for(paths, epochs=None, num_workers=num_workers, document_mask=True)
    (plain,) = loaders(cfg, 1)
    it = iter(plain)
    reference = [read_step(it, plain, ACCUM, pin=False) for _ in range(8)]

    (ld,) = loaders(cfg, 1)
    pf = Prefetcher(ld, ACCUM, depth=3, pin=False)
    got = [pf.next() for _ in range(4)]
    for a, b in zip(got, reference):
        same(a.batches, b.batches)
        assert a.tokens == b.tokens == float(sum(x["loss_mask"].sum() for x in b.batches))
        assert a.stats == b.stats
    # the thread has read ahead (depth 3): the live loader state is not the consumed one
    for _ in range(500):  # wait (at most 5 s) for the thread to refill its queue
        if pf._q.full():
            break
        time.sleep(0.01)
    assert pf._q.full() and ld.state_dict() != got[-1].state
    saved = roundtrip(got[-1].state)  # what Trainer.data_state() checkpoints
    pf.close()

    (resumed,) = loaders(cfg, 1)
    resumed.load_state_dict(saved)
    it = iter(resumed)
    for ref in reference[4:]:
        same(read_step(it, resumed, ACCUM, pin=False).batches, ref.batches)


def test_prefetch_raises_loader_errors_and_end():
    class Broken:
        def __iter__(self):
            yield {"loss_mask": torch.ones(2, 4)}
            raise ValueError("shard /x/part-0.tar is corrupt")

        def state_dict(self):
            return {}

    pf = Prefetcher(Broken(), 1, depth=2, pin=False)
    assert pf.next().tokens == 8.0
    with pytest.raises(ValueError, match="part-0.tar"):
        pf.next()
    pf.close()

    class Finite(Broken):
        def __iter__(self):
            yield {"loss_mask": torch.ones(2, 4)}

    pf = Prefetcher(Finite(), 1, depth=1, pin=False)
    pf.next()
    with pytest.raises(StopIteration):
        pf.next()
    pf.close()
