"""A sweep with failing jobs: every job runs, then one line per failed job (its dir and error) and exit status 1,
with Hydra's local launcher and with submitit (its local executor: each job in a process of its own, as on SLURM)."""

import json

import pytest

from .conftest import QUICK, run_cli

# Sweeps of QUICK: one job completes in seconds; the others fail once the run has its dir: batch 1 cannot take Mixup,
# 8 images cannot fill a batch of 16. (A bad config value in any job stops the sweep before it starts: test_schema.)
MIXUP = "Mixup/CutMix needs a per-device batch of 2 or more, got 1"


def _summary(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("[g16net]   FAILED ")]


def test_local_sweep_runs_every_job_then_lists_the_failed_ones(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *QUICK, "batch_size=1,16", "data.synthetic.train_size=8,32",
                    f"hydra.sweep.dir={sweep}"], check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    done = [i for i in range(4) if (sweep / str(i) / "metrics.json").is_file()]
    assert len(done) == 1  # batch 16 of 32 images: the job after the failing ones ran to the end
    lines = _summary(proc.stderr)
    assert len(lines) == 3 and f"FAILED {sweep}/{done[0]}:" not in proc.stderr
    mixup = [line for line in lines if MIXUP in line]
    assert len(mixup) == 2 and sum("8 training images are fewer than one batch" in line for line in lines) == 1
    failed_dir = mixup[0].split("FAILED ", 1)[1].split(":", 1)[0]
    assert json.loads((tmp_path / failed_dir / "error.json").read_text())["error"] in mixup[0]


@pytest.mark.slow
def test_submitit_sweep_reports_a_job_that_failed_in_its_own_process(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "hydra/launcher=submitit_local", *QUICK, "batch_size=1,16", f"hydra.sweep.dir={sweep}"],
                   check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (sweep / "1" / "metrics.json").is_file()
    assert _summary(proc.stderr) == [f"[g16net]   FAILED {sweep}/0: augment: {MIXUP}; change the batch size (and "
                                     "device/replica/accumulation counts) or turn mixing off "
                                     "(augment.mixup_alpha=0 augment.cutmix_lambda=null)"]


@pytest.mark.slow
def test_a_sweep_rerun_into_the_same_dir_reports_only_its_own_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    # fewer images than one batch: refused inside each job (a bad value would stop the sweep before any job)
    failed = run_cli(["-m", *QUICK, "data.synthetic.train_size=8", "augment.mixup_alpha=0,0.1",
                      f"hydra.sweep.dir={sweep}"], check=False)
    assert failed.returncode == 1 and len(_summary(failed.stderr)) == 2
    ok = run_cli(["-m", *QUICK, "augment.mixup_alpha=0", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=again"],
                 check=False)
    assert ok.returncode == 0 and not _summary(ok.stderr), ok.stderr[-3000:]
    assert (sweep / "again" / "metrics.json").is_file()
