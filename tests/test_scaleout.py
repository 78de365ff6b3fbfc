"""Scale-out on the existing engines: Lightning DDP (2 CPU processes, gloo), Hydra's submitit launchers, SLURM
requeue-resume, and W&B offline logging, each through the real command line."""


import pytest
from hydra.utils import instantiate

from .conftest import ROOT, SMOKE, TINY, compose_cfg, copy_run, read_metrics, run_cli

DDP_CPU = ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def test_ddp_two_processes_write_one_run(tmp_path):
    cwd, run_dir = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    run_cli([*TINY, *DDP_CPU, f"hydra.run.dir={run_dir}"], cwd=cwd)
    m = read_metrics(run_dir)
    assert (m["world_size"], m["global_batch_size"], m["per_device_batch_size"]) == (2, 16, 8)
    assert m["lr"] == pytest.approx(16 * 2**-17)  # scaled from the global batch, not the per-device one
    assert list(cwd.iterdir()) == []  # rank 1 reused rank 0's run dir: no stray outputs/ anywhere
    # rank 0's results only, once (each rank keeps its own log file)
    assert sorted(p.name for p in run_dir.iterdir() if p.suffix != ".log") == [".hydra", "checkpoints", "metrics.json"]
    assert list(run_dir.rglob("metrics.json")) == [run_dir / "metrics.json"]


@pytest.mark.slow
def test_ddp_inside_a_sweep_keeps_one_dir_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(["-m", *TINY, *DDP_CPU, "norm=gn,ln_pn", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    assert [read_metrics(sweep / j)["world_size"] for j in jobs] == [2, 2]
    assert [read_metrics(sweep / j)["model"]["norm"] for j in jobs] == ["gn", "ln_pn"]


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(["-m", *TINY, "hydra/launcher=submitit_local", "norm=gn,ln_pn", f"hydra.sweep.dir={sweep}"])
    assert sorted(read_metrics(sweep / j)["model"]["norm"] for j in ("0", "1")) == ["gn", "ln_pn"]


def test_slurm_preset_has_sane_defaults():
    cfg = compose_cfg(["hydra/launcher=submitit_slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)  # one task per GPU
    assert launcher.max_num_timeout == 10 and launcher.timeout_min >= 60  # requeued up to 10 times (README)
    slurm = instantiate(launcher)  # the plugin accepts every field (nothing is submitted)
    assert type(slurm).__name__ == "SlurmLauncher"


def test_requeued_slurm_job_resumes_instead_of_refusing(smoke_run, tmp_path):
    tmp_path = copy_run(smoke_run, tmp_path / "run")
    first = read_metrics(tmp_path)
    refused = run_cli([*SMOKE, f"hydra.run.dir={tmp_path}"], check=False)
    assert refused.returncode == 2 and "ckpt_path=last" in refused.stderr + refused.stdout
    again = run_cli([*SMOKE, f"hydra.run.dir={tmp_path}"], env={"SLURM_RESTART_COUNT": "1"})  # as on requeue
    resumed = read_metrics(tmp_path)
    # phases reloaded, not retrained
    assert resumed["status"] == "complete" and "phase 'train' already finished" in again.stdout + again.stderr
    assert "phase 'finetune' already finished" in again.stdout + again.stderr
    # the finished phases' weights, evaluated again: the same scores; the first segment's time still counted
    assert [r["top1"] for r in resumed["eval"]] == [r["top1"] for r in first["eval"]]
    assert resumed["wall_time_s"] >= first["wall_time_s"] and resumed["epochs"] == first["epochs"]


@pytest.mark.slow
def test_wandb_offline_one_run_per_phase_and_no_bleed(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(["-m", "debug=smoke", "logger=wandb", "trainer.accelerator=cpu", "norm=gn,ln_pn",
             f"hydra.sweep.dir={sweep}"], env={"WANDB_SILENT": "true"}, cwd=ROOT)
    for job in ("0", "1"):
        runs = sorted((sweep / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 4, runs  # train, eval_before_finetune, finetune, eval: each its own W&B run
    ids = {p.name.rsplit("-", 1)[-1] for job in ("0", "1") for p in (sweep / job / "wandb").glob("offline-run-*")}
    assert len(ids) == 8  # no run reused across phases or sweep jobs


@pytest.mark.parametrize("overrides, expected", [([], True), (["trainer.deterministic=true"], False),
                                                 (["trainer.benchmark=false"], False)])
def test_cudnn_benchmark_on_unless_deterministic(overrides, expected):
    """trainer.benchmark=auto: cuDNN picks conv algorithms by timing on GPUs, but not when deterministic kernels
    are asked for (it would override them)."""
    from g16net.backends.lightning import LightningBackend

    backend = LightningBackend(compose_cfg([*TINY, "trainer=cpu", *overrides]), None)
    assert backend.trainer_args["benchmark"] is expected
