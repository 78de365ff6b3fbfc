"""Same config + same seed on the same machine = the same numbers; another seed = other numbers."""

import json

import torch

from .conftest import TINY, run_cli

# Mixup/CutMix on (b1's authors' values) so that their random draws are covered too.
ARGS = [*TINY, "model.size=b1", "data.native_resolution=64", "data.half_resolution=32", "throughput.enabled=false"]


def _scores(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    return [(r["resolution"], r["top1"], r["loss"]) for r in m["eval_before_finetune"] + m["eval"]]


def test_two_identical_tiny_runs_give_identical_metrics_and_weights(tmp_path):
    runs = {name: tmp_path / name for name in ("a", "b", "seed1")}
    for name, run_dir in runs.items():
        run_cli([*ARGS, f"seed={1 if name == 'seed1' else 0}", f"hydra.run.dir={run_dir}"])
    assert _scores(runs["a"]) == _scores(runs["b"])
    weights = [torch.load(runs[n] / "checkpoints" / "finetune.pt", weights_only=True) for n in ("a", "b", "seed1")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert any(not torch.equal(weights[0][k], weights[2][k]) for k in weights[0])  # the seed does matter
