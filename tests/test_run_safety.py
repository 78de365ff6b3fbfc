"""Issue 9: runs that fail loudly, never damage finished results, and say what they are doing."""

import hashlib
import json
import os
import stat
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from g16net.backends.lit_module import LitClassifier, NonFiniteLossError
from g16net.checks.config_check import check_config
from g16net.core.config import ConfigError
from g16net.core.run_io import atomic_write_json
from g16net.core.run_safety import RunDirRefused
from g16net.data.config import auto_workers
from g16net.run.runner import run

from .conftest import ROOT, SMOKE, TINY, compose_cfg, image_tree, run_cli, start_and_signal


def _snapshot(d):
    """Every path under d with its bytes' hash and mode: equal snapshots = a byte-identical directory."""
    return {str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                    stat.S_IMODE(p.stat().st_mode)) for p in sorted(d.rglob("*"))}


def _finished_run(d, overrides=()):
    """A run dir as a finished run leaves it (config, results, checkpoints, logs), without training one."""
    cfg = compose_cfg([*TINY, *overrides])
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (d / ".hydra" / "overrides.yaml").write_text("- debug=smoke\n")
    atomic_write_json(d / "metrics.json", {"status": "complete", "model": {"norm": cfg.norm.name}})
    (d / "checkpoints" / "train").mkdir(parents=True)
    (d / "checkpoints" / "train" / "last.ckpt").write_bytes(b"weights")
    (d / "logs" / "train").mkdir(parents=True)
    (d / "logs" / "train" / "metrics.csv").write_text("epoch,step,train/loss\n0,3,2.3\n")
    (d / "train.log").write_text("old log\n")
    return d


def test_sigterm_exits_143_records_why_and_resume_keeps_history(tmp_path, capsys):
    args = [*TINY, "logger=csv", "epochs=3", "trainer.limit_train_batches=20", "finetune.epochs=1",
            "eval.before_finetune=false", "throughput.enabled=false"]
    code, out = start_and_signal([*args, f"hydra.run.dir={tmp_path}"], tmp_path / "checkpoints" / "train" / "last.ckpt")
    assert code == 143, out[-3000:]
    err = json.loads((tmp_path / "error.json").read_text())
    assert err["status"] == "stopped" and "SIGTERM" in err["error"] and err["last_checkpoint"].endswith("last.ckpt")
    assert "ckpt_path=last" in out and f"hydra.run.dir={tmp_path}" in out  # how to resume
    assert "train epoch 1/3  loss" in out and "ETA" in out  # one plain line per epoch, outside a terminal
    assert "GPU available" not in out and "Tip" not in out
    rows_before = (tmp_path / "logs" / "train" / "metrics.csv").read_text().splitlines()
    # as if the stopped segment had taken 1000 s longer: the resumed run must add it, not restart the count
    wall = tmp_path / "checkpoints" / "wall_time.json"
    earlier = json.loads(wall.read_text())["wall_time_s"] + 1000
    atomic_write_json(wall, {"wall_time_s": earlier})

    t0 = time.monotonic()
    capsys.readouterr()
    run(compose_cfg([*args, "ckpt_path=last"]), tmp_path)  # in this process: only the stop needed a child
    segment = time.monotonic() - t0
    resumed = capsys.readouterr().out
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["epochs"] == 3 and not (tmp_path / "error.json").exists()
    assert earlier < m["wall_time_s"] < earlier + segment  # every segment counted, once
    rows_after = (tmp_path / "logs" / "train" / "metrics.csv").read_text().splitlines()
    assert rows_after[1:len(rows_before)] == rows_before[1:] and len(rows_after) > len(rows_before)
    assert "after finetuning: test   64 px  top-1" in resumed


@pytest.mark.parametrize("extra", [["norm=gn"], ["norm=gn", "ckpt_path=last"], ["+epoch=3"]])
def test_refused_rerun_leaves_the_run_dir_byte_identical(tmp_path, extra):
    d = _finished_run(tmp_path / "run")
    before = _snapshot(d)
    proc = run_cli([*TINY, *extra, f"hydra.run.dir={d}"], check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert _snapshot(d) == before
    text = proc.stdout + proc.stderr
    if "ckpt_path=last" in extra:
        assert "norm.name: run has 'ln_pn', this command 'gn'" in text
    elif "+epoch=3" in extra:
        assert "'epoch'" in text and "did you mean 'epochs'" in text
    else:
        assert "already holds metrics.json, checkpoints" in text


def test_overwrite_moves_every_result_aside(tmp_path):
    d = _finished_run(tmp_path / "run")
    before = _snapshot(d)
    cfg = compose_cfg([*TINY, "overwrite=true", "data.synthetic.train_size=1"])  # fails soon after the move
    with pytest.raises(Exception):  # noqa: B017  (any failure; only the moved files matter here)
        run(cfg, d)
    backup = next(d.glob("previous-*"))
    assert _snapshot(backup) == before
    assert not (d / "metrics.json").exists() and not (d / "logs").exists()


def test_resume_checks_come_first(tmp_path):
    with pytest.raises(RunDirRefused, match="holds no checkpoints/ to resume"):
        run(compose_cfg([*TINY, "ckpt_path=last"]), tmp_path / "typo")
    assert not (tmp_path / "typo").exists()
    d = tmp_path / "run"
    (d / "checkpoints" / "train").mkdir(parents=True)
    (d / ".hydra").mkdir()
    (d / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(compose_cfg(TINY)))
    with pytest.raises(RunDirRefused, match=r"model.size: run has 'b0', this command 'b1'"):
        run(compose_cfg([*TINY, "model.size=b1", "ckpt_path=last"]), d)
    run_ok = compose_cfg([*TINY, "ckpt_path=last", "data.num_workers=0"])  # allowed to differ on resume
    from g16net.core.run_safety import config_differences

    assert config_differences(OmegaConf.load(d / ".hydra" / "config.yaml"), run_ok) == []


def test_error_json_names_the_newest_last_checkpoint(tmp_path):
    """A run stopped while training again after an earlier finetune (both phases hold a last.ckpt) names the
    checkpoint written last, whatever the phases' names sort as."""
    from g16net.train import _last_checkpoint

    assert _last_checkpoint(tmp_path) is None
    for age, phase in enumerate(("train", "finetune")):  # finetune's is the older one
        ckpt = tmp_path / "checkpoints" / phase / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"")
        os.utime(ckpt, (time.time() - 100 * age,) * 2)
    assert _last_checkpoint(tmp_path) == str(tmp_path / "checkpoints" / "train" / "last.ckpt")
    os.utime(tmp_path / "checkpoints" / "finetune" / "last.ckpt")  # now the newest
    assert _last_checkpoint(tmp_path) == str(tmp_path / "checkpoints" / "finetune" / "last.ckpt")


def test_a_mistyped_run_dir_to_resume_is_refused_with_nothing_created(tmp_path):
    proc = run_cli([*TINY, "ckpt_path=last", f"hydra.run.dir={tmp_path / 'typo' / 'run'}"], check=False)
    assert proc.returncode == 2 and "holds no checkpoints/ to resume" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []  # neither the run dir nor the parent Hydra made for it


def test_only_the_dirs_hydra_made_for_a_refused_command_are_removed(tmp_path):
    from g16net.core.run_safety import NoteNewRunDir, remove_new_run_dir

    def refused(run_dir):
        NoteNewRunDir().on_run_start(OmegaConf.create({"hydra": {"run": {"dir": str(run_dir)}}}))
        run_dir.mkdir(parents=True, exist_ok=True)  # as Hydra does next
        remove_new_run_dir(run_dir)

    (tmp_path / "mine").mkdir()  # the user's own empty dir stays, and so does a parent that holds something
    refused(tmp_path / "mine")
    (tmp_path / "mine" / "notes.txt").write_text("x")
    refused(tmp_path / "mine" / "a" / "b")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["mine", "mine/notes.txt"]


def test_a_truncated_last_checkpoint_is_named_before_training(tmp_path):
    d = tmp_path / "run"
    last = d / "checkpoints" / "train" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "epoch": 0}, last)
    last.write_bytes(last.read_bytes()[:1000])  # a copy cut short
    (d / ".hydra").mkdir()
    (d / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(compose_cfg(TINY)))
    with pytest.raises(ConfigError, match=rf"{last} cannot be read \(.*zip archive.*\)\. Delete it to restart the "
                                          r"'train' phase.*overwrite=true") as err:
        run(compose_cfg([*TINY, "ckpt_path=last"]), d)
    assert type(err.value) is ConfigError and "internal miniz error" not in str(err.value)
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["train"]  # nothing trained, nothing saved


def test_unknown_keys_are_rejected_but_presets_compose():
    with pytest.raises(ConfigError, match=r"unknown config key 'epoch' \(value 3\).*did you mean 'epochs'"):
        check_config(compose_cfg([*TINY, "+epoch=3"]))
    with pytest.raises(ConfigError, match="'finetune.epoch'.*did you mean 'finetune.epochs'"):
        check_config(compose_cfg([*TINY, "+finetune.epoch=1"]))
    for preset in (["sweep=pareto_cpu"], ["sweep=norm_ablation_cpu"],
                   ["experiment=paper_imagenet", "data.root=/datasets/imagenet"], ["series=g16_lnpn_half"],
                   ["hydra/launcher=submitit_slurm"]):
        check_config(compose_cfg([*TINY, *preset]))


def test_finetune_mixup_batch_fails_before_training(tmp_path):
    cfg = compose_cfg([*TINY, "finetune.batch_size=1", "finetune.mixup=true", "augment.mixup_alpha=0.2"])
    with pytest.raises(ConfigError, match=r"finetune.mixup: Mixup/CutMix .* got 1.*finetune.mixup=false"):
        run(cfg, tmp_path)
    assert not (tmp_path / "checkpoints" / "train").exists()


def test_single_class_and_empty_class_folders_are_named(tmp_path):
    one = image_tree(tmp_path / "one", classes=1, per_class=2)
    with pytest.raises(ConfigError, match=r"has 1 class folder \('class_0'\).*at least 2"):
        run(compose_cfg([*TINY, "data=imagefolder", f"data.root={one}"]), tmp_path / "r1")
    empty = tmp_path / "empty"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (empty / split / c).mkdir(parents=True)
    proc = run_cli([*TINY, "data=imagefolder", f"data.root={empty}", f"hydra.run.dir={tmp_path / 'r2'}"],
                   check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in text and str(empty) in text and "no valid file" in text


def test_nan_at_epoch_zero_names_the_lr_and_claims_no_checkpoint(tmp_path, monkeypatch):
    real = LitClassifier.compute_loss
    monkeypatch.setattr(LitClassifier, "compute_loss", lambda self, x, y: real(self, x, y) * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, step 0, learning rate [0-9.e-]+;") as e:
        run(compose_cfg(TINY), tmp_path)
    assert "kept (it was written" not in str(e.value)
    assert not list(tmp_path.glob("checkpoints/*/last.ckpt"))


def test_result_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_num_workers_auto_follows_the_cpus():
    cpus = len(os.sched_getaffinity(0))
    assert auto_workers() == max(0, min(8, cpus - 1)) and auto_workers(cpus) == 0
    assert compose_cfg([*TINY, "data=imagenet"]).data.num_workers == "auto"


def test_help_lists_the_main_knobs():
    out = run_cli(["--help"]).stdout
    for needle in ("debug=smoke", "ckpt_path=last", "experiment=paper_imagenet", "overwrite=true", "model.size"):
        assert needle in out


def test_checkpoint_from_another_model_is_named_before_training(smoke_run, tmp_path):
    """ckpt_path=PATH made with norm=ln_pn, resumed with norm=gn: a clean error naming the differing config key,
    before any epoch (no logs written), instead of Lightning's state_dict dump."""
    ckpt = smoke_run / "checkpoints" / "train" / "last.ckpt"
    dst = tmp_path / "dst"
    proc = run_cli([*SMOKE, "norm=gn", f"ckpt_path={ckpt}", f"hydra.run.dir={dst}"], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "was made with another model" in out and "norm.name: run has 'ln_pn', this command 'gn'" in out
    assert not (dst / "logs").exists()


def test_sigterm_inside_a_sweep_stops_it_non_zero_and_records_why(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "norm=gn,ln_pn", "epochs=3", "trainer.limit_train_batches=20", "finetune.epochs=1",
            "eval.before_finetune=false", "throughput.enabled=false", f"hydra.sweep.dir={sweep}"]
    code, out = start_and_signal(args, sweep / "0" / "checkpoints" / "train" / "last.ckpt")
    assert code == 143, out[-3000:]
    err = json.loads((sweep / "0" / "error.json").read_text())
    assert err["status"] == "stopped" and "SIGTERM" in err["error"]
    assert not (sweep / "0" / "metrics.json").exists() and not (sweep / "1" / "metrics.json").exists()


LIGHTNING_SAW_SIGTERM = """
import sys
from g16net.backends.lit_module import LitClassifier
real = LitClassifier.training_step
def step(self, *a, **k):  # what Lightning's SIGTERM notifier leaves when our handler's exception is lost
    self.trainer._signal_connector.received_sigterm = True
    return real(self, *a, **k)
LitClassifier.training_step = step
from g16net.train import main
sys.argv = ["g16net.train", *sys.argv[1:]]
main()
"""


def test_sigterm_seen_only_by_lightning_still_exits_143_with_error_json(tmp_path):
    """Lightning ends its loop with a SystemExit of status 0 when it alone saw SIGTERM; the run must still be
    recorded as stopped, not pass as a success."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-c", LIGHTNING_SAW_SIGTERM, "-m", *TINY, "norm=gn,ln",
                           "throughput.enabled=false", f"hydra.sweep.dir={sweep}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 143, (proc.stdout + proc.stderr)[-3000:]
    err = json.loads((sweep / "0" / "error.json").read_text())
    assert err["status"] == "stopped" and "SIGTERM" in err["error"]
    assert not (sweep / "0" / "metrics.json").exists() and not (sweep / "1").exists()
