"""Report tables: labels as columns, K as rows, mean ± std over seeds, best in bold."""

from __future__ import annotations

import json
import statistics

import pytest
import yaml

from smoothtopk.train.config import ConfigError
from smoothtopk.train.report import report, results_table


def fake_run(label, seed, macro):
    return {"label": label, "seed": seed,
            "metrics": {"test": {f"macro_top{k}": v for k, v in macro.items()}}}


def test_mean_std_over_seeds_and_bold_best():
    runs = [fake_run("CE", s, {1: a, 3: b}) for s, (a, b) in
            enumerate([(0.30, 0.50), (0.32, 0.52), (0.34, 0.57)])]
    runs += [fake_run("noised", s, {1: a, 3: b}) for s, (a, b) in
             enumerate([(0.20, 0.60), (0.22, 0.61), (0.21, 0.65)])]
    table = results_table(runs, ks=(1, 3, 5))
    lines = table.splitlines()
    assert lines[0] == "| K | CE | noised |"
    ce1 = f"{statistics.fmean([30, 32, 34]):.2f} ± {statistics.stdev([30, 32, 34]):.2f}"
    no1 = f"{statistics.fmean([20, 22, 21]):.2f} ± {statistics.stdev([20, 22, 21]):.2f}"
    assert lines[2] == f"| 1 | **{ce1}** | {no1} |"
    assert lines[3].startswith("| 3 | 53.00 ± ") and "| **62.00 ± " in lines[3]
    assert lines[4] == "| 5 | NA | NA |"
    assert "mean ± std over 3 seeds" in table


def test_single_seed_has_no_std():
    table = results_table([fake_run("CE", 0, {1: 0.5}), fake_run("B", 0, {1: 0.25})], ks=(1,))
    assert "| 1 | **50.00** | 25.00 |" in table and "±" not in table


def test_top_metric_and_errors():
    run = fake_run("CE", 0, {1: 0.5})
    run["metrics"]["test"]["top1"] = 0.75
    assert "| 1 | 75.00 |" in results_table([run], ks=(1,), metric="top")
    with pytest.raises(ConfigError):
        results_table([run], metric="micro")
    with pytest.raises(ConfigError):
        results_table([])


def test_report_reads_run_folders(tmp_path):
    for i, label in enumerate(["x", "y"]):
        run = tmp_path / label
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({"loss": "ce", "label": label,
                                                         "seed": 0}))
        (run / "metrics.json").write_text(json.dumps({"test": {"macro_top1": 0.1 * (i + 1)}}))
    assert "| 1 | 10.00 | **20.00** |" in report([tmp_path / "x", tmp_path / "y"], ks=(1,))
