"""Suite-wide settings.

The suite runs as two pytest-xdist workers on a 2-core machine: one torch thread per
worker avoids oversubscription, which makes small convolutions 20-50x slower.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
