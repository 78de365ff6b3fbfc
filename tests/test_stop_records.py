"""What a stopped or failed job leaves for its user (error.json, the exit status, the resume command), through
the real command line."""

import json
import os
import signal
import subprocess
import sys

import pytest

from g16net.core.run_safety import RunStopped, raise_if_stopped, stop_on_signals

from .conftest import QUICK, ROOT, TINY, start_and_signal

NAN_FROM_EPOCH_1 = """
import sys
from g16net.backends.lit_module import LitClassifier
real = LitClassifier.compute_loss
LitClassifier.compute_loss = lambda self, x, y: real(self, x, y) * (float("nan") if self.current_epoch else 1.0)
from g16net.train import main
sys.argv = ["g16net.train", *sys.argv[1:]]
main()
"""


def test_sigint_before_the_first_checkpoint_exits_130_and_says_so(tmp_path):
    # A long first epoch (30 steps) and the signal as soon as training starts: no checkpoint can exist yet.
    args = [*TINY, "epochs=2", "data.synthetic.train_size=512", "trainer.limit_train_batches=30",
            "throughput.enabled=false", f"hydra.run.dir={tmp_path}"]
    code, out = start_and_signal(args, "== train:", signal.SIGINT)
    assert code == 130, out[-3000:]
    assert not list(tmp_path.glob("checkpoints/*/last.ckpt")) and not (tmp_path / "metrics.json").exists()
    err = json.loads((tmp_path / "error.json").read_text())
    assert (err["status"], err["signal"], err["last_checkpoint"]) == ("stopped", "SIGINT", None)
    assert "run stopped by SIGINT before its first checkpoint" in out
    assert f"hydra.run.dir={tmp_path} ckpt_path=last" in out  # how to go on


def test_a_nan_loss_leaves_error_json_naming_the_last_good_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-c", NAN_FROM_EPOCH_1, *QUICK, "epochs=2", f"hydra.run.dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    last = str(tmp_path / "checkpoints" / "train" / "last.ckpt")
    err = json.loads((tmp_path / "error.json").read_text())
    assert err["status"] == "failed" and err["last_checkpoint"] == last
    assert err["error"].startswith("NonFiniteLossError: non-finite training loss (nan) at epoch 1")
    assert f"last good checkpoint: {last}" in out and not (tmp_path / "metrics.json").exists()


def test_a_stop_swallowed_by_a_finalizer_is_raised_at_the_next_safe_point():
    """A signal that lands inside an object's __del__ (run by the garbage collector, e.g. Lightning's profiler) has
    its RunStopped printed and ignored by Python; the run's next safe point raises it again."""

    class SignalsWhileFinalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, inside the finalizer

    reached = []
    with pytest.raises(RunStopped) as stopped:
        with stop_on_signals():
            obj = SignalsWhileFinalized()
            del obj
            reached.append("after the finalizer")  # the finalizer's RunStopped did not propagate
            raise_if_stopped()
    assert reached and stopped.value.exit_code == 130
    with pytest.raises(RunStopped):
        with stop_on_signals():
            obj = SignalsWhileFinalized()
            del obj  # nothing raises it before the block ends: leaving the block does
    raise_if_stopped()  # a finished block leaves nothing pending
