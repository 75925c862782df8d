"""CPU-only shims for megatron-core (the only place such patches live; tested in the SP tests).

megatron-core allocates sequence-parallel all-gather buffers with
`device=torch.cuda.current_device()`; on a machine without CUDA that call raises. Pointing it at the
CPU makes the same code run on gloo. Nothing is patched when CUDA is available.
"""
import torch


def install_cpu_shims() -> None:
    if torch.cuda.is_available():
        return
    torch.cuda.current_device = lambda: "cpu"
