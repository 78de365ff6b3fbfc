"""Builds fake Hydra output trees (good, failed, unfinished, corrupt runs) for collect/figs tests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

HYDRA_CONFIG = "model:\n  size: b0\n  norm: ln_pn\nschedule: half\n"


def make_metrics(name="g16_b0_ln_pn_half", size="b0", group_size=16, norm="ln_pn", schedule="half",
                 finetuned=True, expand_ratio=4, evals=((64, 61.2, 400.0), (96, 70.3, 190.0)),
                 headline_resolution=96, native_resolution=96, train_resolution=64, params=5914000,
                 train_macs=52e6, train_throughput=120.5, seed=0, config_extra=None, **overrides) -> dict:
    """A valid metrics.json per the training job's contract; ``evals``: (resolution, top1, infer img/s).

    ``config`` is a (much shortened) resolved Hydra config; ``config_extra`` adds top-level keys to it.
    """
    m = {
        "schema": 1, "status": "complete", "name": name,
        "model": {"name": f"g{group_size}_efficientnet_{size}", "size": size, "group_size": group_size,
                  "expand_ratio": expand_ratio, "norm": norm},
        "schedule": schedule, "finetuned": finetuned, "dataset": "synthetic", "num_classes": 10,
        "params": params, "train_resolution": train_resolution, "native_resolution": native_resolution,
        "headline_resolution": headline_resolution, "train_macs": train_macs,
        "train_throughput": train_throughput, "train_throughput_pipeline": 80.1, "device": "cpu",
        "precision": "32-true",
        "throughput_protocol": {"batch_size": 32, "warmup_steps": 2, "timed_steps": 5, "channels_last": False,
                                "compile": False},
        "eval": [{"resolution": r, "top1": t, "top5": min(100.0, t + 25), "loss": 1.0,
                  "macs": train_macs * (r / train_resolution) ** 2, "infer_throughput": ips}
                 for r, t, ips in evals],
        "eval_before_finetune": [{"resolution": 96, "top1": 65.0, "top5": 90.0, "loss": 1.2,
                                  "macs": train_macs * 2.25, "infer_throughput": 190.0}] if finetuned else [],
        "finetune_resolution": native_resolution if finetuned else None, "version": "0.1.0",
        "epochs": 6, "finetune_epochs": 2 if finetuned else 0, "wall_time_s": 412.0,
        "config": {"name": name, "seed": seed, "epochs": 6, "ckpt_path": None, "overwrite": False,
                   "model": {"size": size, "group_size": group_size, "expand_ratio": expand_ratio},
                   "norm": {"name": norm}, "resolution": {"schedule": schedule},
                   "finetune": {"epochs": 2 if finetuned else 0}, "data": {"name": "synthetic"},
                   **(config_extra or {})},
    }
    m.update(overrides)
    return m


def write_run(run_dir: Path, metrics: dict | None = None, *, metrics_text: str | None = None,
              error: dict | None = None, hydra: bool = True) -> Path:
    """A run dir as Hydra + the training job leave it; metrics_text writes raw (e.g. truncated) JSON."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if hydra:
        (run_dir / ".hydra").mkdir(exist_ok=True)
        (run_dir / ".hydra" / "config.yaml").write_text(HYDRA_CONFIG)
    if metrics is not None:
        metrics_text = json.dumps(metrics, indent=2)
    if metrics_text is not None:
        (run_dir / "metrics.json").write_text(metrics_text)
    if error is not None:
        (run_dir / "error.json").write_text(json.dumps(error))
    return run_dir


@dataclass
class Tree:
    root: Path
    sweep: Path                      # multirun sweep root (not a run itself)
    good: dict[str, Path] = field(default_factory=dict)       # name -> complete run dir
    bad: dict[str, tuple[Path, str]] = field(default_factory=dict)  # name -> (run dir, expected reason)
    n_rows: int = 0


def build_tree(root: Path) -> Tree:
    """5 complete runs (11 rows): a 4-run sweep (b0 G16 Half x {LN+PN, GN, BN}, b1 LN+PN) plus a single G1
    GN Native run with 3 test resolutions; and 6 bad runs, one per failure mode collect must report."""
    sweep = root / "multirun" / "2026-11-22" / "12-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    t = Tree(root=root, sweep=sweep)
    sweep_runs = [
        make_metrics(norm="ln_pn", evals=((64, 61.2, 400.0), (96, 70.3, 190.0)), train_throughput=120.5),
        make_metrics(name="g16_b0_gn_half", norm="gn", evals=((64, 60.0, 420.0), (96, 68.9, 200.0)),
                     train_throughput=130.0),
        make_metrics(name="g16_b0_bn_half", norm="bn", evals=((64, 62.5, 500.0), (96, 69.5, 260.0)),
                     train_throughput=150.0),
        make_metrics(name="g16_b1_ln_pn_half", size="b1", evals=((80, 66.0, 250.0), (120, 73.0, 110.0)),
                     headline_resolution=120, native_resolution=120, train_resolution=80, params=8e6,
                     train_macs=95e6, train_throughput=70.0),
    ]
    for i, m in enumerate(sweep_runs):
        t.good[m["name"]] = write_run(sweep / str(i), m)
    t.bad["failed"] = (write_run(sweep / "4", error={"status": "failed", "error": "CUDA out of memory",
                                                     "last_checkpoint": "checkpoints/last.ckpt"}),
                       "failed: CUDA out of memory (last checkpoint: checkpoints/last.ckpt)")

    out = root / "outputs" / "2026-11-22"
    single = make_metrics(name="g1_b0_gn_native", group_size=1, norm="gn", schedule="native",
                          expand_ratio=6, train_resolution=96, train_macs=40e6, params=5.3e6,
                          evals=((64, 58.0, 600.0), (96, 68.0, 300.0), (128, 69.0, 170.0)))
    t.good["g1_b0_gn_native"] = write_run(out / "12-00-00", single)
    # overwrite=true moves an older result aside inside the run dir; it must not count as another run
    write_run(out / "12-00-00" / "previous-20261122-110000", make_metrics(name="old"), hydra=False)
    t.n_rows = 4 * 2 + 3

    t.bad["unfinished"] = (write_run(out / "13-00-00"), "unfinished: no metrics.json")
    full = json.dumps(make_metrics(), indent=2)
    t.bad["half_written"] = (write_run(out / "14-00-00", metrics_text=full[: len(full) // 2]),
                             "metrics.json does not parse (half-written or corrupt?)")
    t.bad["running"] = (write_run(out / "15-00-00", make_metrics(status="running")),
                        "status is 'running', not 'complete'")
    missing = make_metrics()
    del missing["model"]["norm"], missing["train_macs"], missing["eval"][1]["top1"]
    t.bad["missing"] = (write_run(out / "16-00-00", missing),
                        "missing required fields: train_macs, model.norm, eval[1].top1")
    t.bad["empty_eval"] = (write_run(out / "17-00-00", make_metrics(eval=[])), "empty eval list")
    return t



# Seed offsets: top-1 moves by these points, throughputs by these percent, so every std is known and non-zero.
SEED_DELTA = {0: 0.0, 1: 1.0, 2: -1.0}


def make_seed_runs(seeds=(0, 1, 2), top1=70.0, train_throughput=100.0, infer_throughput=None, **kw) -> list[dict]:
    """metrics.json of one configuration trained with each of ``seeds`` (test resolutions 64 and 96).

    Inference img/s at 96 px defaults to 2.5x training img/s."""
    infer_throughput = infer_throughput or 2.5 * train_throughput
    runs = []
    for s in seeds:
        d = SEED_DELTA[s]
        runs.append(make_metrics(
            seed=s, evals=((64, top1 - 8 + d, infer_throughput * 2 * (1 + d / 100)),
                           (96, top1 + d, infer_throughput * (1 + d / 100))),
            train_throughput=train_throughput * (1 + d / 100), **kw))
    return runs


def build_seed_tree(root: Path) -> dict[str, list[Path]]:
    """A multirun sweep with seeds 0,1,2 of the paper's six series at b0 (b1 for the two Half ones; G16-GN-Half b1
    has seeds 0,1 only) plus a G16-BN-Half b0 run with seed 0 only: n = 3, 2 and 1 side by side. Returns
    configuration name -> its run dirs. The G16 b0 Half configs differ only by norm (an ablation group)."""
    g1 = dict(group_size=1, expand_ratio=6, train_resolution=96, train_macs=40e6, params=5.3e6)
    configs = {
        "g16_b0_ln_pn_half": make_seed_runs(name="g16_b0_ln_pn_half", norm="ln_pn", top1=71.0,
                                            train_throughput=110.0),
        "g16_b1_ln_pn_half": make_seed_runs(name="g16_b1_ln_pn_half", norm="ln_pn", size="b1", top1=74.0,
                                            train_throughput=70.0, params=8e6, train_macs=95e6),
        "g16_b0_gn_half": make_seed_runs(name="g16_b0_gn_half", norm="gn", top1=69.5, train_throughput=130.0),
        "g16_b1_gn_half": make_seed_runs((0, 1), name="g16_b1_gn_half", norm="gn", size="b1", top1=72.5,
                                         train_throughput=80.0, params=8e6, train_macs=95e6),
        "g16_b0_bn_half": make_seed_runs((0,), name="g16_b0_bn_half", norm="bn", top1=70.0,
                                         train_throughput=150.0),
        "g16_b0_ln_pn_native": make_seed_runs(name="g16_b0_ln_pn_native", norm="ln_pn", schedule="native",
                                              top1=72.0, train_throughput=60.0, train_resolution=96,
                                              train_macs=117e6),
        "g16_b0_gn_native": make_seed_runs(name="g16_b0_gn_native", norm="gn", schedule="native", top1=71.5,
                                           train_throughput=70.0, train_resolution=96, train_macs=117e6),
        "g1_b0_gn_native": make_seed_runs(name="g1_b0_gn_native", norm="gn", schedule="native", top1=69.0,
                                          train_throughput=50.0, **g1),
        "g1_b0_gn_baseline": make_seed_runs(name="g1_b0_gn_baseline", norm="gn", schedule="native", top1=66.0,
                                            train_throughput=50.0, finetuned=False, **g1),
    }
    sweep = root / "multirun" / "seeds"
    dirs, i = {}, 0
    for name, runs in configs.items():
        dirs[name] = []
        for m in runs:
            dirs[name].append(write_run(sweep / str(i), m))
            i += 1
    return dirs
