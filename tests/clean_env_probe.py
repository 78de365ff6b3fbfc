"""Run by tests/test_clean_env.py in a pytest of its own, started with a SLURM job's variables (not collected by
the suite: the file name does not start with test_)."""

import json
import os

import pytest

from .conftest import HOST_ENV, QUICK, run_cli


@pytest.fixture(scope="module")
def module_environment():
    return dict(os.environ)  # what a module-scoped fixture (a shared finished run, say) sees


def test_a_tiny_run_trains_afresh_and_finishes(module_environment, tmp_path):
    assert not [k for k in (*module_environment, *os.environ) if HOST_ENV.fullmatch(k)]
    proc = run_cli([*QUICK, f"hydra.run.dir={tmp_path}"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "complete" and "already finished" not in proc.stdout + proc.stderr
