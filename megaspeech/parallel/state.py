"""Process groups: torch.distributed via DeepSpeed, groups from megatron-core's parallel_state.

Rank order is megatron's default (TP fastest, then DP, then PP), which is also the order of
DeepSpeed's `PipeModelDataParallelTopology(num_pp, num_mp, num_dp)`; `pipeline_topology()` asserts
that the two agree so a pipeline stage's DeepSpeed groups are megatron's.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    rank: int
    world: int


def init_distributed(tp: int, pp: int) -> Layout:
    import deepspeed
    from megatron.core import parallel_state as ps

    from megaspeech.parallel.cpu_shims import install_cpu_shims

    install_cpu_shims()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    deepspeed.init_distributed(dist_backend=backend)
    _unlink_deepspeed_shm()
    ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    return current_layout()


def _unlink_deepspeed_shm() -> None:
    """DeepSpeed's CPU shared-memory all-reduce (all ranks on one host) creates
    /dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank> (69 MB per rank)
    and never unlinks it, so every CPU run left that much RAM behind. Each rank maps all its peers'
    segments inside init_distributed; once every rank is past it (the barrier), the names are no
    longer needed: unlinking them now frees the memory when the processes exit, killed or not."""
    if torch.cuda.is_available():
        return
    dist.barrier()
    name = (f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{dist.get_rank()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


def current_layout() -> Layout:
    from megatron.core import parallel_state as ps
    return Layout(
        tp=ps.get_tensor_model_parallel_world_size(), pp=ps.get_pipeline_model_parallel_world_size(),
        dp=ps.get_data_parallel_world_size(), tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(), dp_rank=ps.get_data_parallel_rank(),
        rank=dist.get_rank(), world=dist.get_world_size(),
    )


def destroy_distributed() -> None:
    from megatron.core import parallel_state as ps
    if dist.is_initialized():
        dist.barrier()  # PLATFORM.md: without it ~1 in 13 exits aborted after finishing
        ps.destroy_model_parallel()
        dist.destroy_process_group()


class MegatronMPU:
    """DeepSpeed's `mpu` protocol on top of megatron-core's parallel_state (model parallel = TP)."""

    def __getattr__(self, name):
        from megatron.core import parallel_state as ps
        return getattr(ps, name)

    def get_model_parallel_rank(self):
        from megatron.core import parallel_state as ps
        return ps.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self):
        from megatron.core import parallel_state as ps
        return ps.get_tensor_model_parallel_world_size()

    def get_model_parallel_group(self):
        from megatron.core import parallel_state as ps
        return ps.get_tensor_model_parallel_group()

    def get_data_parallel_group_ranks(self):
        from megatron.core import parallel_state as ps
        return ps.get_data_parallel_global_ranks()


def pipeline_topology(layout: Layout):
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
    topo = PipeModelDataParallelTopology(num_pp=layout.pp, num_mp=layout.tp, num_dp=layout.dp)
    coord = topo.get_coord(layout.rank)
    if (coord.pipe, coord.model, coord.data) != (layout.pp_rank, layout.tp_rank, layout.dp_rank):
        raise RuntimeError(f"DeepSpeed topology {coord} disagrees with megatron-core's rank order {layout}")
    return topo
