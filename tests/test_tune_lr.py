"""The LR range test (`python -m g16net.tune_lr`), checked by running it."""

import json
import math
import os
import subprocess
import sys

from g16net.tune_lr import LR_RANGE

from .conftest import ROOT


def test_tune_lr_prints_the_override_and_writes_its_curve(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "g16net.tune_lr", "debug=smoke", "trainer.limit_train_batches=1.0",
         "data.synthetic.train_size=400", "data.synthetic.val_size=16", "batch_size=8", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads((tmp_path / "lr_find.json").read_text())
    assert f"train with:  optimizer.lr_per_sample={found['lr_per_sample']!r}" in proc.stdout
    assert math.log2(found["lr_per_sample"]).is_integer()
    assert LR_RANGE[0] <= found["lr_per_sample"] <= LR_RANGE[1]
    assert found["planned_steps"] == 50 and 10 < found["steps"] <= 50  # 400 / 8 updates, fewer if it diverged
    assert found["lr_range"] == [LR_RANGE[0] * 8, LR_RANGE[1] * 8]
    assert (tmp_path / "lr_find.png").stat().st_size > 0


def test_tune_lr_refuses_a_bad_value_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "g16net.tune_lr", "debug=smoke", "model.size=b9",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "size='b9'; allowed: b0" in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "lr_find.json").exists()
