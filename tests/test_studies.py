"""A real (tiny) study: Hydra multirun of the main job -> `g16net.collect` -> `g16net.figs`."""

import csv
import json
import os
import subprocess

import pytest

from g16net import collect, figs

from .conftest import ROOT, TINY, run_cli


def test_sweep_then_collect_then_figures(tmp_path):
    sweep = tmp_path / "sweep"
    # Two jobs (each native/half series label and every figure are covered with fixture runs in test_collect and
    # test_figs): the real commands end to end, gn vs ln_pn at equal size and schedule for the ablation figure.
    run_cli(["-m", "debug=smoke", "logger=none", "norm=gn,ln_pn", "resolution=half", f"hydra.sweep.dir={sweep}"])
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    combos = {(m["model"]["norm"], m["schedule"]) for m in (json.loads((p / "metrics.json").read_text()) for p in jobs)}
    assert combos == {("gn", "half"), ("ln_pn", "half")}

    table = tmp_path / "results.csv"
    assert collect.main([str(sweep), "--out", str(table)]) == 0
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 2 * 2  # 2 runs x 2 test resolutions (32, 64)
    assert {r["series"] for r in rows} == {"G16-GN-Half", "G16-LN+PN-Half"}
    assert all(r["train_resolution"] == "32" for r in rows) and all(float(r["train_throughput"]) > 0 for r in rows)

    out = tmp_path / "figs"
    assert figs.main([str(table), "--out", str(out), "--paper-overlay"]) == 0
    for name in ("pareto_macs", "pareto_params", "pareto_train_throughput", "pareto_infer_throughput", "pareto",
                 "norm_ablation"):  # gn vs ln_pn at equal size and schedule: an ablation group exists
        for ext in ("png", "pdf"):
            assert (out / f"{name}.{ext}").stat().st_size > 5000, f"{name}.{ext}"


def _paper_figs_state():
    """What a study writes (tables and figures) in the repository's paper_figs/, with modification times."""
    return {p: p.stat().st_mtime_ns for p in (ROOT / "paper_figs").rglob("*")
            if p.suffix in (".csv", ".png", ".pdf")}


@pytest.mark.slow
def test_study_script_writes_under_out_and_leaves_paper_figs_alone(tmp_path):
    """scripts/study.sh with --out: runs, tables and figures in that folder (a relative path is the caller's),
    nothing in the repository's paper_figs/."""
    before = _paper_figs_state()
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "study.sh"), "norm_ablation", "cpu", "--out", "mine",
                           *TINY, "norm=gn,ln_pn", "seed=0"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=1200, env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "mine"
    assert sorted(p.name for p in out.iterdir() if p.name.isdigit()) == ["0", "1"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["norm"] for r in rows} == {"gn", "ln_pn"} and (out / "results_mean.csv").is_file()
    assert (out / "figs" / "norm_ablation.png").stat().st_size > 5000
    assert (out / "figs" / "power_epochs" / "power_epochs.png").is_file()  # the CPU preset records the power terms
    assert _paper_figs_state() == before


def test_study_script_refuses_a_bad_out_before_any_run(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "study.sh"), "pareto", "cpu", "--out"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--out needs a folder" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_pareto_cpu_study_benches_every_model_norm_and_resolution_its_runs_need(tmp_path):
    """The CPU Pareto preset trains without the per-run protocol, so scripts/study.sh measures the throughput axes
    with one bench run: it must cover every series' model and norm at every resolution of the preset, and collect
    must take it (a `python` stand-in records the commands instead of running them)."""
    import yaml

    shim = tmp_path / "bin" / "python"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n')
    shim.chmod(0o755)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "study.sh"), "pareto", "cpu", "--out", "s"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [c.split()[1] for c in calls] == ["g16net.train", "g16net.bench", "g16net.bench", "g16net.collect",
                                             "g16net.figs"]
    benches = [c.split() for c in calls[1:3]]
    args = [{k: b[i + 1].split(",") for i, k in enumerate(b) if k.startswith("--")} for b in benches]
    assert calls[3].endswith("--throughput s/bench.csv s/bench_infer96.csv")
    assert [a["--csv"] for a in args] == [["s/bench.csv"], ["s/bench_infer96.csv"]]
    arg = {k: args[0][k] for k in ("--models", "--norms", "--num-classes")}
    assert all({k: a[k] for k in arg} == arg for a in args)  # the same models in both
    measured = {(int(r), m) for a in args for r in a["--res"] for m in a["--modes"]}
    preset = yaml.safe_load((ROOT / "conf" / "sweep" / "pareto_cpu.yaml").read_text())
    assert preset["throughput"]["enabled"] is False
    need_models, need_norms = set(), set()
    for series in preset["hydra"]["sweeper"]["params"]["series"].split(","):
        choice = {k.split("/")[1].strip(): v for d in yaml.safe_load(
            (ROOT / "conf" / "series" / f"{series}.yaml").read_text())["defaults"] for k, v in d.items()}
        need_norms.add(choice["norm"])
        need_models.update(f"{choice['model']}_efficientnet_{s}"
                           for s in preset["hydra"]["sweeper"]["params"]["model.size"].split(","))
    data = preset["data"]
    need = {(r, "train") for r in (data["native_resolution"], data["half_resolution"])}
    need |= {(r, "infer") for r in data["test_resolutions"]}
    assert set(arg["--models"]) == need_models and set(arg["--norms"]) == need_norms
    assert need <= measured and arg["--num-classes"] == ["10"]
