"""The suite's verdict does not depend on the machine's environment: started as inside a SLURM job (its variables, a
launcher's rank variables, this project's and W&B's switches all set), a tiny run still trains afresh and finishes,
and fixtures of any scope see none of those variables."""

import os
import subprocess
import sys

from .conftest import HOST_ENV, ROOT

# What `python -m pytest` inherits inside `srun`/`sbatch` on a cluster node with those switches exported. Without the
# clean environment, Lightning refuses the run (SLURM_NTASKS=2 for 1 device) and a fresh run would be a resume.
AS_IN_A_SLURM_JOB = {"SLURM_RESTART_COUNT": "1", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "1", "LOCAL_RANK": "0",
                     "WORLD_SIZE": "1", "G16NET_CPU_KERNEL": "0", "WANDB_MODE": "online"}


def test_inside_a_slurm_job_a_tiny_run_gives_the_normal_verdict():
    assert all(HOST_ENV.fullmatch(name) for name in AS_IN_A_SLURM_JOB)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "-q",
                           "tests/clean_env_probe.py"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **AS_IN_A_SLURM_JOB})
    assert proc.returncode == 0 and "1 passed" in proc.stdout, (proc.stdout + proc.stderr)[-4000:]
