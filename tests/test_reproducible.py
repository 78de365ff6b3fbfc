"""Same config + same seed on the same machine = the same numbers; another seed = other numbers."""

import torch

from .conftest import SMOKE, read_metrics, run_cli

# The shared smoke run again: throughput off, as it is measured last, on a fresh model, and changes no score or
# weight of the run (it only draws that model's initial weights).
AGAIN = [*SMOKE, "throughput.enabled=false"]


def _scores(run_dir):
    m = read_metrics(run_dir)
    return [(r["resolution"], r["top1"], r["loss"]) for r in m["eval_before_finetune"] + m["eval"]]


def _weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "finetune.pt", weights_only=True)


def test_two_identical_tiny_runs_give_identical_metrics_and_weights(smoke_run, tmp_path):
    # Both reruns in one multirun (one process start, not two); seed 0 first, so it starts as fresh as the shared run.
    run_cli(["-m", *AGAIN, "seed=0,1", f"hydra.sweep.dir={tmp_path}"])
    runs = {"b": tmp_path / "0", "seed1": tmp_path / "1"}
    assert _scores(smoke_run) == _scores(runs["b"])
    a, b, seed1 = _weights(smoke_run), _weights(runs["b"]), _weights(runs["seed1"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], seed1[k]) for k in a)  # the seed does matter
