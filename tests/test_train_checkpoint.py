"""Checkpoints are atomic: a run killed while writing one keeps the last complete one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from smoothtopk.train.checkpoint import write_atomic
from smoothtopk.train.run import train
from test_train_run import small_config

# Trains 3 epochs; when the second epoch's first checkpoint is being written, half of the
# bytes are written and the process kills itself (SIGKILL: no cleanup, like a power cut
# or an OOM kill).
KILLER = textwrap.dedent("""
    import os, signal, sys
    import lightning.pytorch as pl
    import smoothtopk.train.checkpoint as ckpt_io
    from smoothtopk.train.config import load_config
    from smoothtopk.train.run import train

    class Writer:
        def __init__(self, handle):
            self.handle = handle
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)
        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def dying_open(path, mode):
        return Writer(open(path, mode))

    class KillInSecondEpoch(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 1:
                ckpt_io.open = dying_open

    config = load_config(None, **__SETTINGS__)
    train(config, callbacks=[KillInSecondEpoch()])
""")


@pytest.mark.slow
def test_killed_while_saving_keeps_last_complete_checkpoint(tmp_path):
    out = tmp_path / "run"
    config = small_config(out, loss="ce", epochs=3)
    script = KILLER.replace("__SETTINGS__", repr(config.to_dict()))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    last = out / "checkpoints" / "last.ckpt"
    assert (out / "checkpoints" / "last.ckpt.tmp").is_file() or \
        (out / "checkpoints" / "best.ckpt.tmp").is_file()  # the interrupted write
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert [r["epoch"] for r in checkpoint["smoothtopk_history"]] == [0]
    assert not (out / "metrics.json").exists()
    # the run resumes from it and finishes
    train(config, resume=True)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [0, 1, 2]


def test_write_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "a.bin"
    write_atomic(b"old", path)
    write_atomic(b"new content", path)
    assert path.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_write_atomic_interrupted_leaves_old_file(tmp_path, monkeypatch):
    import smoothtopk.train.checkpoint as ckpt_io

    path = tmp_path / "a.bin"
    write_atomic(b"old", path)

    def failing_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_io.os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(b"new", path)
    assert path.read_bytes() == b"old"
