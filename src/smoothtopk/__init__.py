"""smoothtopk: top-K and set-valued classification for many, ambiguous, long-tailed classes.

The public API is re-exported here; see the README for an overview.
"""

from smoothtopk.metrics import (
    FrequencyBinAccuracy,
    TopKMetrics,
    accuracy_by_frequency_bin,
    macro_topk_accuracy,
    per_class_topk_accuracy,
    topk_accuracy,
)
from smoothtopk.ops import (
    SmoothKthLargest,
    kth_largest,
    smooth_kth_largest,
    smooth_topk_sum,
    topk_sum,
)

__version__ = "0.1.0"

__all__ = [
    "FrequencyBinAccuracy",
    "SmoothKthLargest",
    "TopKMetrics",
    "__version__",
    "accuracy_by_frequency_bin",
    "kth_largest",
    "macro_topk_accuracy",
    "per_class_topk_accuracy",
    "smooth_kth_largest",
    "smooth_topk_sum",
    "topk_accuracy",
    "topk_sum",
]
