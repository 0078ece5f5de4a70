"""The loss benchmark script (``benchmarks/bench_losses.py``) runs and reports its table;
no figure is checked (benchmarks are never timed tests)."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_losses.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_losses", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


_TINY = ["--sizes", "12", "20", "--batch", "4", "--repeats", "2", "--min-time", "0"]


@pytest.mark.parametrize("regime", ["normal", "peaked"])
def test_table_of_the_chosen_contenders(bench, regime, tmp_path, capsys):
    out = tmp_path / "table.md"
    text = bench.main([*_TINY, "--regime", regime, "--only", "'(bal|imbal)_topk'",
                       "--out", str(out)])
    assert out.read_text(encoding="utf-8") == text
    assert text in capsys.readouterr().out
    assert f"regime = {regime}" in text
    assert f"eps = {1.0 if regime == 'normal' else 0.1}" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == "| loss | C = 12 | C = 20 |"
    names = [row.split(" | ")[0][2:] for row in rows[2:]]
    assert names == ["F.cross_entropy", "build_loss('bal_topk')", "build_loss('imbal_topk')"]
    assert re.fullmatch(r"\| F\.cross_entropy \| 1x \([\d.]+ ms\) \| 1x \([\d.]+ ms\) \|",
                        rows[2])
    for row in rows[3:]:
        cells = row.split(" | ")[1:]
        assert len(cells) == 2
        assert all(re.fullmatch(r"[\d.]+x( \|)?", cell) for cell in cells)


def test_only_matching_nothing_is_an_error(bench, capsys):
    with pytest.raises(SystemExit) as info:
        bench.main([*_TINY, "--only", "no such loss"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--only 'no such loss'" in err
    assert "build_loss('bal_topk')" in err


def test_the_operator_is_timed_next_to_the_losses(bench):
    text = bench.main([*_TINY, "--only", "smooth_kth"])
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    names = [row.split(" | ")[0][2:] for row in rows[2:]]
    assert names == ["F.cross_entropy", "smooth_kth_largest(k = K + 1).mean()"]
