"""Suite-wide settings.

The suite runs as two pytest-xdist workers on a 2-core machine: one torch thread per
worker avoids oversubscription, which makes small convolutions 20-50x slower.

Without a GPU the Triton kernels run under Triton's interpreter: ``TRITON_INTERPRET`` must
be set before anything imports Triton (Lightning and torch can import it while the tests
are collected), since Triton decides at import which of its own functions are interpreted.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
