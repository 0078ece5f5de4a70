"""smoothtopk: top-K and set-valued classification for many, ambiguous, long-tailed classes.

The public API is re-exported here; see the README for an overview.
"""

from smoothtopk import functional
from smoothtopk.losses import (
    LOSSES,
    CalibratedTopKHingeLoss,
    FocalLoss,
    ImbalancedNoisedTopKLoss,
    LDAMLoss,
    NoisedTopKLoss,
    SmoothTopKSVMLoss,
    TopKCvxHingeLoss,
    TopKHingeLoss,
    build_loss,
    loss_requires_class_counts,
)
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
from smoothtopk.sets import AverageKSets, ConformalSets, TopKSets

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "AverageKSets",
    "CalibratedTopKHingeLoss",
    "ConformalSets",
    "FocalLoss",
    "FrequencyBinAccuracy",
    "ImbalancedNoisedTopKLoss",
    "LDAMLoss",
    "NoisedTopKLoss",
    "SmoothKthLargest",
    "SmoothTopKSVMLoss",
    "TopKCvxHingeLoss",
    "TopKHingeLoss",
    "TopKMetrics",
    "TopKSets",
    "__version__",
    "accuracy_by_frequency_bin",
    "build_loss",
    "functional",
    "kth_largest",
    "loss_requires_class_counts",
    "macro_topk_accuracy",
    "per_class_topk_accuracy",
    "smooth_kth_largest",
    "smooth_topk_sum",
    "topk_accuracy",
    "topk_sum",
]
