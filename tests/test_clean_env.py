"""The suite's verdict does not depend on the machine's environment: run as inside a SLURM job (its variables, a
launcher's rank variables, this project's and W&B's switches all set), a tiny run still trains afresh and finishes."""

import json
import os

import pytest

from .conftest import HOST_ENV, QUICK, run_cli

# What `python -m pytest` inherits inside `srun`/`sbatch` on a cluster node with those switches exported. Without the
# clean environment, Lightning refuses the run (SLURM_NTASKS=2 for 1 device) and a fresh run would be a resume.
AS_IN_A_SLURM_JOB = {"SLURM_RESTART_COUNT": "1", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "1", "LOCAL_RANK": "0",
                     "WORLD_SIZE": "1", "G16NET_CPU_KERNEL": "0", "WANDB_MODE": "online"}


@pytest.fixture(scope="module")
def slurm_job_environment():
    """Set in the test process before the (function-scoped, autouse) clean environment runs, as a parent shell's
    variables are: pytest sets up higher-scoped fixtures first."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AS_IN_A_SLURM_JOB.items():
            mp.setenv(name, value)
        yield


def test_a_tiny_run_inside_a_slurm_job_gives_the_normal_verdict(slurm_job_environment, tmp_path):
    assert all(HOST_ENV.fullmatch(name) for name in AS_IN_A_SLURM_JOB)
    assert not set(AS_IN_A_SLURM_JOB) & set(os.environ)
    proc = run_cli([*QUICK, f"hydra.run.dir={tmp_path}"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "complete" and "already finished" not in proc.stdout + proc.stderr
