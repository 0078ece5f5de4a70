"""smoothtopk: top-K and set-valued classification for many, ambiguous, long-tailed classes.

The public API is re-exported here; see the README for an overview.
"""

from smoothtopk.ops import (
    SmoothKthLargest,
    kth_largest,
    smooth_kth_largest,
    smooth_topk_sum,
    topk_sum,
)

__version__ = "0.1.0"

__all__ = [
    "SmoothKthLargest",
    "__version__",
    "kth_largest",
    "smooth_kth_largest",
    "smooth_topk_sum",
    "topk_sum",
]
