"""Shared fixtures: compose the real Hydra config (as lightning-hydra-template's tests do) and run the real job."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

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


def read_metrics(run_dir) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def image_tree(root, classes=3, per_class=6, size=40, splits=("train", "val")) -> Path:
    """Real PNG files under root/<split>/class_<c>/: class c is a colour ramp in channel c % 3, plus noise."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c in range(classes):
            d = Path(root) / split / f"class_{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                img = np.zeros((size, size, 3), np.uint8)
                img[..., c % 3] = np.linspace(60, 250, size, dtype=np.uint8)[None, :]
                img = np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return Path(root)


def start_and_signal(args, until, sig=signal.SIGTERM, prefix=("-m", "g16net.train"), timeout=600):
    """`python -m g16net.train ARGS` (or `python PREFIX ARGS`), sent `sig` as soon as `until` holds: a Path that
    exists, or a text the job has printed. (exit code, output); the signal goes out also when the job ended or
    `timeout` passed, so a test of what the signal did fails on its own assertions, not here."""
    proc = subprocess.Popen([sys.executable, *prefix, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen = (lambda: Path(until).exists()) if isinstance(until, Path) else (lambda: any(until in ln for ln in lines))
    deadline = time.time() + timeout
    while not seen() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    reader.join(timeout=30)
    return proc.returncode, "".join(lines)


# The main job as a user types it (`debug=smoke`, with a CSV log), finished once for the whole suite: tests that
# only read a finished run (its contract, its checkpoints, `g16net.eval` on it) share it, and tests that change a
# run work on a copy (copy_run). The pytest-xdist workers share one through a lock in their common temp dir.
# CutMix on (b1's lambda; b0 has none), so that a rerun's identical numbers cover its random draws too.
SMOKE = ["debug=smoke", "logger=csv", "trainer.accelerator=cpu", "augment.cutmix_lambda=0.95"]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    run_dir = shared / "smoke_run"
    with FileLock(str(shared / "smoke_run.lock")):
        if not (run_dir / "metrics.json").exists():
            if run_dir.exists():  # a worker stopped while making it
                shutil.rmtree(run_dir)
            run_cli([*SMOKE, f"hydra.run.dir={run_dir}"])
    return run_dir


def copy_run(src, dst) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return Path(dst)


# The paper's presets read ImageNet's train/ and val/ folders: a 2-class tree of one image each stands in for it.
PAPER_CPU = ["trainer.accelerator=cpu", "trainer.precision=32-true"]


@pytest.fixture(scope="session")
def imagenet_tree(tmp_path_factory) -> Path:
    return image_tree(tmp_path_factory.mktemp("imagenet"), classes=2, per_class=1, size=8)


@pytest.fixture(scope="session")
def paper_cfg(imagenet_tree):
    """`experiment=paper_imagenet` as composed for a run, and its run plan."""
    cfg = compose_cfg(["experiment=paper_imagenet", f"data.root={imagenet_tree}", *PAPER_CPU])
    return cfg, plan_of(cfg)
