"""Tests of smoothtopk.metrics against torchmetrics and plain loop references."""

from __future__ import annotations

import itertools
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics.classification import MulticlassAccuracy

from smoothtopk.metrics import (
    DEFAULT_FREQUENCY_EDGES,
    FrequencyBinAccuracy,
    TopKMetrics,
    accuracy_by_frequency_bin,
    macro_topk_accuracy,
    per_class_topk_accuracy,
    topk_accuracy,
)

# --------------------------------------------------------------------------- references


def ref_hit(scores: list[float], y: int, k: int) -> bool:
    """Documented rule: y is in the top k iff fewer than k scores are strictly larger
    (NaN larger than everything); a NaN true score is a miss."""
    sy = scores[y]
    if math.isnan(sy):
        return False
    above = sum(1 for s in scores if math.isnan(s) or s > sy)
    return above < k


def ref_per_class(x: torch.Tensor, y: torch.Tensor, k: int) -> list[float]:
    rows, labels = x.double().tolist(), y.tolist()
    c = x.shape[1]
    hits, support = [0] * c, [0] * c
    for scores, label in zip(rows, labels, strict=True):
        support[label] += 1
        hits[label] += ref_hit(scores, label, k)
    return [h / n if n else math.nan for h, n in zip(hits, support, strict=True)]


def ref_micro(x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    rows, labels = x.double().tolist(), y.tolist()
    return sum(ref_hit(s, t, k) for s, t in zip(rows, labels, strict=True)) / len(labels)


def ref_macro(x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    present = [a for a in ref_per_class(x, y, k) if not math.isnan(a)]
    return sum(present) / len(present)


def ref_bins(x, y, counts, k, edges):
    """Loop reference for the frequency bins: dict of lists."""
    rows, labels = x.double().tolist(), y.tolist()
    per_class = ref_per_class(x, y, k)
    out = {key: [] for key in ("num_classes", "num_present", "num_samples", "acc", "macro")}
    for b in range(len(edges) - 1):
        lo, hi = edges[b], edges[b + 1]
        members = [j for j, n in enumerate(counts) if (lo < n <= hi) or (b == 0 and n == lo)]
        samples = [(s, t) for s, t in zip(rows, labels, strict=True) if t in members]
        present = [j for j in members if not math.isnan(per_class[j])]
        out["num_classes"].append(len(members))
        out["num_present"].append(len(present))
        out["num_samples"].append(len(samples))
        hits = sum(ref_hit(s, t, k) for s, t in samples)
        out["acc"].append(hits / len(samples) if samples else math.nan)
        out["macro"].append(
            sum(per_class[j] for j in present) / len(present) if present else math.nan
        )
    return out


def assert_close_nan(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.double(), expected, atol=atol, rtol=0, equal_nan=True)


def all_present_data(n_per_class: int, c: int, gen: torch.Generator, dtype=torch.float32):
    """Random scores; every class present; labels shuffled."""
    y = torch.arange(c).repeat_interleave(n_per_class)
    y = y[torch.randperm(y.numel(), generator=gen)]
    x = torch.randn(y.numel(), c, generator=gen, dtype=dtype)
    x[torch.arange(y.numel()), y] += 1.0  # better than chance, so accuracies are not all ~k/C
    return x, y


def tied_data(n: int, c: int, gen: torch.Generator):
    """Integer-valued scores in a small range: many ties, including at the true class."""
    x = torch.randint(0, 3, (n, c), generator=gen).float()
    y = torch.randint(0, c, (n,), generator=gen)
    return x, y


# --------------------------------------------------------------------------- torchmetrics parity


@pytest.mark.parametrize("c", [2, 5, 17, 50])
def test_matches_torchmetrics_when_every_class_present(c: int) -> None:
    gen = torch.Generator().manual_seed(c)
    x, y = all_present_data(7, c, gen)
    ks = list(range(1, c + 1))
    micro = topk_accuracy(x, y, ks)
    macro = macro_topk_accuracy(x, y, ks)
    for i, k in enumerate(ks):
        tm_micro = MulticlassAccuracy(num_classes=c, top_k=k, average="micro")(x, y)
        tm_macro = MulticlassAccuracy(num_classes=c, top_k=k, average="macro")(x, y)
        torch.testing.assert_close(micro[i], tm_micro, atol=1e-6, rtol=0)
        torch.testing.assert_close(macro[i], tm_macro, atol=1e-6, rtol=0)
        torch.testing.assert_close(topk_accuracy(x, y, k), tm_micro, atol=1e-6, rtol=0)
        torch.testing.assert_close(macro_topk_accuracy(x, y, k), tm_macro, atol=1e-6, rtol=0)


def test_macro_differs_from_micro_on_imbalanced_data() -> None:
    # guards against macro silently computing the micro average
    gen = torch.Generator().manual_seed(0)
    y = torch.cat([torch.zeros(90, dtype=torch.int64), torch.ones(10, dtype=torch.int64)])
    x = torch.randn(100, 3, generator=gen)
    x[:, 0] += 10.0  # class 0 always right, class 1 always wrong, class 2 absent
    assert_close_nan(topk_accuracy(x, y, 1), 0.9)
    assert_close_nan(macro_topk_accuracy(x, y, 1), 0.5)


# --------------------------------------------------------------------------- loop references


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("maker", [all_present_data, tied_data], ids=["continuous", "ties"])
def test_functional_match_loop_reference(seed: int, maker) -> None:
    gen = torch.Generator().manual_seed(seed)
    c = 6 + seed
    x, y = maker(5, c, gen) if maker is all_present_data else maker(40, c, gen)
    ks = list(range(1, c + 1))
    per_class = per_class_topk_accuracy(x, y, ks)
    micro, macro = topk_accuracy(x, y, ks), macro_topk_accuracy(x, y, ks)
    assert per_class.shape == (c, c) and per_class.dtype == torch.float32
    for i, k in enumerate(ks):
        assert_close_nan(per_class[i], ref_per_class(x, y, k))
        assert_close_nan(micro[i], ref_micro(x, y, k))
        assert_close_nan(macro[i], ref_macro(x, y, k))
        assert_close_nan(per_class_topk_accuracy(x, y, k), ref_per_class(x, y, k))


def test_ties_count_for_the_true_class() -> None:
    x = torch.tensor([[1.0, 1.0, 1.0, 0.0], [2.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 5.0]])
    y = torch.tensor([2, 3, 1])
    # row 0: nothing strictly above -> hit at k=1; row 1: one above -> hit from k=2;
    # row 2: one above (5) -> hit from k=2 although three scores tie at or above it
    assert_close_nan(topk_accuracy(x, y, [1, 2, 3]), [1 / 3, 1.0, 1.0])
    # all scores equal: every sample is a hit at every k
    flat = torch.zeros(5, 4)
    assert_close_nan(topk_accuracy(flat, torch.tensor([0, 1, 2, 3, 3]), 1), 1.0)


def test_nan_scores() -> None:
    nan = math.nan
    x = torch.tensor([[nan, 1.0, 0.0], [1.0, nan, 2.0], [0.0, 1.0, 2.0]])
    y = torch.tensor([0, 2, 2])
    # row 0: NaN true score -> miss at every k; row 1: NaN counts above 2.0 -> hit from k=2
    expected = [[ref_hit(r, t, k) for r, t in zip(x.tolist(), y.tolist(), strict=True)]
                for k in (1, 2, 3)]
    assert expected == [[False, False, True], [False, True, True], [False, True, True]]
    assert_close_nan(topk_accuracy(x, y, [1, 2, 3]), [sum(e) / 3 for e in expected])


def test_absent_classes_are_nan_and_left_out_of_macro() -> None:
    x = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 3.0, 2.0], [0.0, 3.0, 2.0, 1.0]])
    y = torch.tensor([0, 3, 3])  # classes 1 and 2 absent; class 3: ranks 1 and 2
    assert_close_nan(per_class_topk_accuracy(x, y, 1), [1.0, nan := math.nan, nan, 0.0])
    assert_close_nan(per_class_topk_accuracy(x, y, 2), [1.0, nan, nan, 0.5])
    assert_close_nan(macro_topk_accuracy(x, y, [1, 2]), [0.5, 0.75])  # not /4
    assert_close_nan(macro_topk_accuracy(x, y, 2, num_classes=4), 0.75)


def test_empty_input_gives_nan() -> None:
    x, y = torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64)
    assert topk_accuracy(x, y, 1).isnan()
    assert macro_topk_accuracy(x, y, [1, 2]).isnan().all()
    assert per_class_topk_accuracy(x, y, 1).isnan().all()


def test_shapes_and_dtypes() -> None:
    gen = torch.Generator().manual_seed(1)
    x, y = tied_data(30, 6, gen)
    assert topk_accuracy(x, y, 2).shape == ()
    assert topk_accuracy(x, y, (2,)).shape == (1,)
    assert macro_topk_accuracy(x, y, range(1, 4)).shape == (3,)
    assert per_class_topk_accuracy(x, y, [1, 5]).shape == (2, 6)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        out = topk_accuracy(x.to(dtype), y, [1, 3])
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, topk_accuracy(x, y, [1, 3]))


# --------------------------------------------------------------------------- frequency bins


def test_frequency_bins_match_loop_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    c = 40
    # training counts across all seed bins, including edge values 0, 10, 50, 500, 2000
    counts = torch.cat([
        torch.tensor([0, 10, 11, 50, 51, 500, 501, 2000, 2001]),
        torch.randint(0, 5000, (c - 9,), generator=gen),
    ])
    y = torch.randint(0, c - 4, (300,), generator=gen)  # the last 4 classes are absent
    x = torch.randint(0, 4, (300, c), generator=gen).float() + torch.randn(300, c, generator=gen)
    x[torch.arange(300), y] += 1.5
    ks = [1, 3, 10]
    bins = accuracy_by_frequency_bin(x, y, counts, ks)
    assert isinstance(bins, FrequencyBinAccuracy)
    assert bins.edges == DEFAULT_FREQUENCY_EDGES and bins.k == (1, 3, 10)
    assert bins.labels == ["0-10", "10-50", "50-500", "500-2000", ">2000"]
    assert bins.accuracy.shape == bins.macro_accuracy.shape == (3, 5)
    for i, k in enumerate(ks):
        ref = ref_bins(x, y, counts.tolist(), k, DEFAULT_FREQUENCY_EDGES)
        assert bins.num_classes.tolist() == ref["num_classes"]
        assert bins.num_present_classes.tolist() == ref["num_present"]
        assert bins.num_samples.tolist() == ref["num_samples"]
        assert_close_nan(bins.accuracy[i], ref["acc"])
        assert_close_nan(bins.macro_accuracy[i], ref["macro"])
        single = accuracy_by_frequency_bin(x, y, counts, k)
        assert single.k == k and single.accuracy.shape == (5,)
        assert_close_nan(single.accuracy, ref["acc"])
    assert sum(bins.num_samples.tolist()) == 300


def test_frequency_bins_edge_assignment_and_empty_bins() -> None:
    x = torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    y = torch.tensor([0, 1, 1, 2])
    bins = accuracy_by_frequency_bin(x, y, [10, 11, 3000], 1)
    assert bins.num_classes.tolist() == [1, 1, 0, 0, 1]
    assert bins.num_samples.tolist() == [1, 2, 0, 0, 1]
    assert_close_nan(bins.accuracy, [1.0, 0.5, math.nan, math.nan, 0.0])
    assert_close_nan(bins.macro_accuracy, [1.0, 0.5, math.nan, math.nan, 0.0])
    custom = accuracy_by_frequency_bin(x, y, [1, 2, 3], 2, edges=(1, 2, 3))
    assert custom.labels == ["1-2", "2-3"]
    assert custom.num_classes.tolist() == [2, 1]  # 1 (lowest edge) and 2 go to the first bin
    d = custom.to_dict()
    assert d["labels"] == ["1-2", "2-3"] and d["num_samples"] == [3, 1] and d["k"] == 2


def test_frequency_bin_macro_ignores_absent_classes() -> None:
    x = torch.tensor([[2.0, 1.0, 0.0, -1.0], [2.0, 1.0, 0.0, -1.0], [2.0, 1.0, 0.0, -1.0]])
    y = torch.tensor([0, 1, 1])  # classes 2, 3 absent; all four in one bin
    bins = accuracy_by_frequency_bin(x, y, [5, 5, 5, 5], 1)
    assert bins.num_classes.tolist()[0] == 4 and bins.num_present_classes.tolist()[0] == 2
    assert_close_nan(bins.macro_accuracy[0], 0.5)  # (1 + 0) / 2
    assert_close_nan(bins.accuracy[0], 1 / 3)


# --------------------------------------------------------------------------- streaming metric


def random_splits(n: int, gen: torch.Generator) -> list[list[int]]:
    """Several ways to cut range(n) into consecutive batches, with empty and size-1 ones."""
    splits = [[n], [1] * n, [0, 1, 0, n - 1, 0]]
    for _ in range(5):
        cuts = sorted(torch.randint(0, n + 1, (int(torch.randint(1, 8, (1,), generator=gen)),),
                                    generator=gen).tolist())
        bounds = [0, *cuts, n]
        splits.append([b - a for a, b in itertools.pairwise(bounds)])
    return splits


def assert_compute_equals_functional(out: dict, x, y, ks, c) -> None:
    assert set(out) == {f"{p}top{k}" for k in ks for p in ("", "macro_", "per_class_")} | {
        "class_support"}
    micro = topk_accuracy(x, y, ks)
    macro = macro_topk_accuracy(x, y, ks)
    per_class = per_class_topk_accuracy(x, y, ks)
    for i, k in enumerate(ks):
        assert out[f"top{k}"].shape == () and out[f"per_class_top{k}"].shape == (c,)
        torch.testing.assert_close(out[f"top{k}"], micro[i], equal_nan=True)
        torch.testing.assert_close(out[f"macro_top{k}"], macro[i], equal_nan=True)
        torch.testing.assert_close(out[f"per_class_top{k}"], per_class[i], equal_nan=True)
    assert torch.equal(out["class_support"], torch.bincount(y, minlength=c))


@pytest.mark.parametrize("seed", range(3))
def test_streaming_equals_functional_for_any_split(seed: int) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    c, n = 12, 61
    x, y = tied_data(n, c, gen)
    y[y == 5] = 4  # one absent class
    x = x + 0.3 * torch.randn(n, c, generator=gen) * (seed > 0)  # seed 0 keeps many ties
    ks = (1, 3, 5, 12)
    counts = torch.randint(1, 3000, (c,), generator=gen)
    whole = accuracy_by_frequency_bin(x, y, counts, ks)
    for sizes in random_splits(n, gen):
        metric = TopKMetrics(c, ks)
        for xb, yb in zip(x.split(sizes), y.split(sizes), strict=True):
            metric.update(xb, yb)
        assert_compute_equals_functional(metric.compute(), x, y, ks, c)
        bins = metric.frequency_bins(counts)
        assert bins.k == ks
        for name in ("num_classes", "num_present_classes", "num_samples"):
            assert torch.equal(getattr(bins, name), getattr(whole, name))
        torch.testing.assert_close(bins.accuracy, whole.accuracy, equal_nan=True)
        torch.testing.assert_close(bins.macro_accuracy, whole.macro_accuracy, equal_nan=True)


def test_reset_and_default_ks() -> None:
    gen = torch.Generator().manual_seed(7)
    x, y = all_present_data(3, 20, gen)
    metric = TopKMetrics(20)
    assert metric.ks == (1, 3, 5, 10)
    metric.update(x[:5] * 0, y[:5])
    metric.reset()
    metric.update(x, y)
    assert_compute_equals_functional(metric.compute(), x, y, (1, 3, 5, 10), 20)


def test_forward_returns_batch_values_and_accumulates() -> None:
    gen = torch.Generator().manual_seed(8)
    c, ks = 6, (1, 2)
    x, y = tied_data(40, c, gen)
    metric = TopKMetrics(c, ks)
    for xb, yb in zip(x.split(15), y.split(15), strict=True):
        assert_compute_equals_functional(metric(xb, yb), xb, yb, ks, c)
    assert_compute_equals_functional(metric.compute(), x, y, ks, c)


def _split_state_metrics(gen: torch.Generator, c: int, ks):
    x, y = tied_data(50, c, gen)
    x = x + torch.randn(50, c, generator=gen)
    a, b = TopKMetrics(c, ks), TopKMetrics(c, ks)
    a.update(x[:20], y[:20])
    b.update(x[20:], y[20:])
    return x, y, a, b


def test_merge_state_equals_single_instance() -> None:
    gen = torch.Generator().manual_seed(11)
    c, ks = 9, (1, 2, 9)
    x, y, a, b = _split_state_metrics(gen, c, ks)
    a.merge_state(b)
    assert_compute_equals_functional(a.compute(), x, y, ks, c)


def test_states_sum_in_distributed_sync() -> None:
    # the path torchmetrics takes under DDP, with the all_gather replaced by a local one
    gen = torch.Generator().manual_seed(12)
    c, ks = 9, (1, 4)
    x, y, a, b = _split_state_metrics(gen, c, ks)
    b_states = {"correct": b.correct.clone(), "support": b.support.clone()}

    def gather(tensor: torch.Tensor, group=None) -> list[torch.Tensor]:
        other = next(v for v in b_states.values() if v.shape == tensor.shape)
        return [tensor, other]

    a.dist_sync_fn = gather
    a.distributed_available_fn = lambda: True
    assert_compute_equals_functional(a.compute(), x, y, ks, c)
    bins = a.frequency_bins([1] * c, edges=(0, 1))
    assert bins.num_samples.tolist() == [50]
    # local states are restored after the synchronised compute
    assert int(a.support.sum()) == 20


def _ddp_worker(rank: int, port: int, x, y, ks, out_dir: str) -> None:
    torch.set_num_threads(1)  # no OpenMP region in a forked child
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        metric = TopKMetrics(x.shape[1], ks)
        half = slice(0, 17) if rank == 0 else slice(17, None)  # unequal shares
        metric.update(x[half], y[half])
        out = metric.compute()
        bins = metric.frequency_bins([5] * x.shape[1])
        torch.save((out, bins.num_samples, metric.support), os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_two_process_gloo_reduction(tmp_path) -> None:
    gen = torch.Generator().manual_seed(13)
    c, ks = 7, (1, 3)
    x, y = tied_data(45, c, gen)
    # fork: the workers inherit the imported modules, which keeps this test to a few seconds
    mp.start_processes(_ddp_worker, args=(_free_port(), x, y, ks, str(tmp_path)), nprocs=2,
                       join=True, start_method="fork")
    for rank, local_n in ((0, 17), (1, 28)):
        out, num_samples, local_support = torch.load(tmp_path / f"{rank}.pt")
        assert_compute_equals_functional(out, x, y, ks, c)
        assert num_samples.tolist() == [45, 0, 0, 0, 0]
        assert int(local_support.sum()) == local_n  # states un-synced after compute


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_update_does_not_sync_and_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(14)
    c, ks = 30, (1, 5)
    x, y = all_present_data(4, c, gen)
    metric = TopKMetrics(c, ks).to("cuda")
    xc, yc = x.cuda(), y.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        metric.update(xc, yc)
        topk_accuracy(xc, yc, list(ks))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    out = {k: v.cpu() for k, v in metric.compute().items()}
    assert_compute_equals_functional(out, x, y, ks, c)


# --------------------------------------------------------------------------- bad input


X = torch.randn(4, 5)
Y = torch.tensor([0, 1, 4, 2])
FUNCS = [topk_accuracy, macro_topk_accuracy, per_class_topk_accuracy,
         lambda i, t, k: accuracy_by_frequency_bin(i, t, [3] * 5, k)]
FUNC_IDS = ["micro", "macro", "per_class", "bins"]


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize(
    ("k", "exc", "match"),
    [
        (0, ValueError, r"k must be in \[1, 5\]"),
        (6, ValueError, r"k must be in \[1, 5\]"),
        ([1, 6], ValueError, r"k\[1\] must be in \[1, 5\]"),
        ([], ValueError, "k must contain at least one value"),
        (2.0, TypeError, "k must be an int"),
        (True, TypeError, "k must be an int"),
        ("1", TypeError, "k must be an int or a sequence"),
        ([1, 2.5], TypeError, r"k\[1\] must be an int"),
    ],
)
def test_bad_k(fn, k, exc, match) -> None:
    with pytest.raises(exc, match=match):
        fn(X, Y, k)


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize(
    ("inp", "tgt", "exc", "match"),
    [
        (X, Y.int(), TypeError, "target must have dtype torch.int64"),
        (X, Y.float(), TypeError, "target must have dtype torch.int64"),
        (X, Y[:3], ValueError, r"target must have shape \(4,\)"),
        (X, Y.unsqueeze(1), ValueError, r"target must have shape \(4,\)"),
        (X, torch.tensor([0, 1, 5, 2]), ValueError, r"target values must be in \[0, 5\)"),
        (X, torch.tensor([0, -1, 4, 2]), ValueError, r"target values must be in \[0, 5\)"),
        (X, [0, 1, 4, 2], TypeError, "target must be a torch.Tensor"),
        (X[0], Y, ValueError, "input must be 2-D"),
        (X.unsqueeze(0), Y, ValueError, "input must be 2-D"),
        (X.long(), Y, TypeError, "input must be a floating-point tensor"),
        (X.tolist(), Y, TypeError, "input must be a torch.Tensor"),
    ],
)
def test_bad_input_target(fn, inp, tgt, exc, match) -> None:
    with pytest.raises(exc, match=match):
        fn(inp, tgt, 1)


@pytest.mark.parametrize("fn", [macro_topk_accuracy, per_class_topk_accuracy])
def test_bad_num_classes(fn) -> None:
    with pytest.raises(ValueError, match="num_classes must equal the number of columns"):
        fn(X, Y, 1, num_classes=6)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        fn(X, Y, 1, num_classes=5.0)


@pytest.mark.parametrize(
    ("counts", "edges", "exc", "match"),
    [
        ([3] * 4, DEFAULT_FREQUENCY_EDGES, ValueError, r"one entry per class \(5\)"),
        ([3, 3, -1, 3, 3], DEFAULT_FREQUENCY_EDGES, ValueError, "class_counts must be finite"),
        ([3, 3, math.nan, 3, 3], DEFAULT_FREQUENCY_EDGES, ValueError, "class_counts must be"),
        ([[3] * 5], DEFAULT_FREQUENCY_EDGES, ValueError, "class_counts must be a non-empty 1-D"),
        ("abcde", DEFAULT_FREQUENCY_EDGES, TypeError, "class_counts must be a sequence"),
        ([3] * 5, (0, 10, 10, 20), ValueError, "edges must be strictly increasing"),
        ([3] * 5, (0,), ValueError, "edges must have at least 2 values"),
        ([3] * 5, (0, math.nan), ValueError, r"edges\[1\] must be in"),
        ([3] * 5, (0, "10"), TypeError, r"edges\[1\] must be a real number"),
        ([3] * 5, 10, TypeError, "edges must be a sequence"),
        ([3, 3, 30, 3, 3], (0, 10, 20), ValueError, r"class_counts must lie within the edges"),
        ([3, 3, 3, 3, 3], (5, 10), ValueError, r"class_counts must lie within the edges"),
    ],
)
def test_bad_frequency_bin_arguments(counts, edges, exc, match) -> None:
    with pytest.raises(exc, match=match):
        accuracy_by_frequency_bin(X, Y, counts, 1, edges=edges)
    metric = TopKMetrics(5, (1, 2))
    metric.update(X, Y)
    with pytest.raises(exc, match=match):
        metric.frequency_bins(counts, edges=edges)


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((5, (1, 6)), ValueError, r"ks\[1\] must be in \[1, 5\]"),
        ((5, (0,)), ValueError, r"ks\[0\] must be in \[1, 5\]"),
        ((5, ()), ValueError, "ks must contain at least one value"),
        ((5, (1, 3, 1)), ValueError, "ks must not repeat"),
        ((5, 3), TypeError, "ks must be a sequence of ints"),
        ((5, (1.0,)), TypeError, r"ks\[0\] must be an int"),
        ((0, (1,)), ValueError, r"num_classes must be >= 1"),
        ((5.0, (1,)), TypeError, "num_classes must be an int"),
        ((5,), ValueError, r"ks\[3\] must be in \[1, 5\]"),  # default ks include 10
    ],
)
def test_bad_metric_construction(args, exc, match) -> None:
    with pytest.raises(exc, match=match):
        TopKMetrics(*args)


@pytest.mark.parametrize(
    ("inp", "tgt", "exc", "match"),
    [
        (torch.randn(4, 6), Y, ValueError, "preds must have num_classes=5 columns"),
        (X[0], Y, ValueError, "preds must be 2-D"),
        (X.long(), Y, TypeError, "preds must be a floating-point tensor"),
        (X, Y.int(), TypeError, "target must have dtype torch.int64"),
        (X, Y[:2], ValueError, r"target must have shape \(4,\)"),
        (X, torch.tensor([0, 1, 7, 2]), ValueError, r"target values must be in \[0, 5\)"),
    ],
)
def test_bad_metric_update(inp, tgt, exc, match) -> None:
    metric = TopKMetrics(5, (1, 2))
    with pytest.raises(exc, match=match):
        metric.update(inp, tgt)
