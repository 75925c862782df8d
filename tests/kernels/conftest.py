"""Fresh random inputs on every run: the seed comes from the clock (or KERNEL_TEST_SEED to
replay a failure) and is printed, so a failing run's captured output names it."""
import os
import time

import pytest
import torch


@pytest.fixture
def seed(request):
    s = int(os.environ.get("KERNEL_TEST_SEED", time.time_ns() % (2**31)))
    print(f"{request.node.nodeid}: seed={s} (replay with KERNEL_TEST_SEED={s})")
    torch.manual_seed(s)
    return s
