"""Shared numba settings of the compiled CPU kernels."""

from __future__ import annotations

import os

import numba

#: Options of every compiled function: cached on disk, numpy's error model (no Python
#: exception checks in the arithmetic).
JIT = {"cache": True, "error_model": "numpy"}

# numba's OpenMP threading layer would share torch's OpenMP runtime and reset its thread
# count; its own work queue touches nothing of torch's (set NUMBA_THREADING_LAYER to
# choose another).
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
