"""Shared fixtures: compose the real Hydra config (as lightning-hydra-template's tests do) and run the real job."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

# Under pytest-xdist (pyproject's addopts) each worker gets its share of the cores, before torch is imported here
# or in the runs the tests start: two workers of two threads each on 2 cores would fight for them. A thread count
# set by the caller is kept.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(
        os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "conf")
# Small enough for seconds per run on 2 CPU cores; still every phase (train, eval, finetune, eval, throughput). On
# the CPU even where a GPU is visible: the tests expect fp32 and bit-identical reruns, which bf16 on a GPU is not.
TINY = ["debug=smoke", "logger=none", "trainer.accelerator=cpu"]
# One job that completes in seconds: a single training step, no finetuning, one test resolution.
QUICK = [*TINY, "trainer.limit_train_batches=1", "finetune.epochs=0", "eval.before_finetune=false",
         "throughput.enabled=false", "data.synthetic.train_size=32", "data.synthetic.val_size=16",
         "eval.resolutions=[32]"]

# What a job manager or launcher leaves in the environment, and this project's and W&B's switches: inside a SLURM
# job, SLURM_RESTART_COUNT turns every fresh run into a resume and SLURM_NTASKS makes Lightning expect srun's ranks;
# a stray G16NET_CPU_KERNEL=0 or WANDB_MODE=online changes what runs. A test that needs one sets it itself.
HOST_ENV = re.compile(r"(SLURM_|MASTER_|G16NET_|WANDB_|TORCHELASTIC_).*|(RANK|LOCAL_RANK|GROUP_RANK|NODE_RANK|"
                      r"WORLD_SIZE|LOCAL_WORLD_SIZE)")


@pytest.fixture(scope="session", autouse=True)
def clean_environment():
    """Every test and fixture (session-scoped: set up before any module's), and every process they start (they
    inherit os.environ), sees none of HOST_ENV: the suite gives the same verdict on a laptop, a GPU node or inside
    a SLURM job. A test's own monkeypatch.setenv still works, and is undone after it."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if HOST_ENV.fullmatch(k)]:
            mp.delenv(name)
        yield


def compose_cfg(overrides=(), return_hydra_config=False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)


def plan_of(cfg):
    """The run plan of a composed config on the Lightning backend, as `g16net.run.runner.run` makes it."""
    from g16net.backends.lightning import LightningBackend
    from g16net.core.config import plan_run
    from g16net.run.runner import load_data

    return plan_run(cfg, load_data(cfg), LightningBackend(cfg, None).device)


@pytest.fixture
def make_cfg():
    return compose_cfg


def run_cli(args, cwd=ROOT, timeout=600, env=None, check=True) -> subprocess.CompletedProcess:
    """`python -m g16net.train ARGS` as a user would type it."""
    proc = subprocess.run([sys.executable, "-m", "g16net.train", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}")
    return proc
