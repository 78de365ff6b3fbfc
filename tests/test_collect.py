import csv
import runpy
import sys
from pathlib import Path

import pytest

from g16net import collect as collect_cli
from g16net.collect import main
from g16net.studies import collect as collect_mod
from g16net.studies.collect import collect, find_run_dirs, write_csv
from g16net.studies.results import ALL_COLUMNS, COLUMNS, MEAN_COLUMNS, aggregate, load_results

try:  # tests/ is on sys.path under pytest's default rootdir-less import mode
    from results_fixtures import build_seed_tree, build_tree, make_metrics, make_seed_runs, write_run
except ImportError:  # tests/ became a package
    from tests.results_fixtures import build_seed_tree, build_tree, make_metrics, make_seed_runs, write_run

@pytest.fixture
def tree(tmp_path):
    return build_tree(tmp_path / "runs")


def test_finds_runs_but_not_the_sweep_root(tree):
    dirs = find_run_dirs(tree.root)
    expected = {p for p in tree.good.values()} | {p for p, _ in tree.bad.values()}
    assert set(dirs) == expected
    assert tree.sweep not in dirs
    assert [d.name for d in dirs if d.parent == tree.sweep] == ["0", "1", "2", "3", "4"]


def test_collect_rows_and_exact_values(tree):
    rows, _ = collect([tree.root])
    assert len(rows) == tree.n_rows
    assert len({r["run_dir"] for r in rows}) == len(tree.good)
    single = [r for r in rows if r["run_dir"] == str(tree.good["g1_b0_gn_native"])]
    assert [r["test_resolution"] for r in single] == [64, 96, 128]
    assert [r["headline"] for r in single] == [False, True, False]
    r96 = single[1]
    expected = {
        "run_dir": str(tree.good["g1_b0_gn_native"]), "series": "G1-GN-Native", "size": "b0", "group_size": 1,
        "expand_ratio": 6, "norm": "gn", "schedule": "native", "finetuned": True, "dataset": "synthetic",
        "train_resolution": 96, "test_resolution": 96, "native_resolution": 96, "headline": True,
        "top1": 68.0, "top5": 93.0, "params": 5.3e6, "train_macs": 40e6, "test_macs": 40e6,
        "train_throughput": 120.5, "train_throughput_pipeline": 80.1, "infer_throughput": 300.0,
        "device": "cpu", "precision": "32-true", "epochs": 6, "finetune_epochs": 2, "wall_time_s": 412.0,
        "name": "g1_b0_gn_native", "top1_before_finetune": 65.0, "throughput_batch_size": 32,
        "finetune_resolution": 96, "version": "0.1.0",
    }
    assert {k: r96[k] for k in expected} == expected
    assert single[0]["top1_before_finetune"] is None  # no pre-finetune eval at 64 px


def test_series_labels(tree):
    rows, _ = collect([tree.root])
    by_name = {r["name"]: r["series"] for r in rows}
    assert by_name == {"g16_b0_ln_pn_half": "G16-LN+PN-Half", "g16_b0_gn_half": "G16-GN-Half",
                       "g16_b0_bn_half": "G16-BN-Half", "g16_b1_ln_pn_half": "G16-LN+PN-Half",
                       "g1_b0_gn_native": "G1-GN-Native"}


def test_unfinetuned_runs_are_the_baseline_series(tmp_path):
    kw = dict(group_size=1, norm="gn", schedule="native")
    write_run(tmp_path / "ft", make_metrics(name="ft", finetuned=True, **kw))
    write_run(tmp_path / "noft", make_metrics(name="noft", finetuned=False, **kw))
    write_run(tmp_path / "half", make_metrics(name="half", finetuned=False))
    rows, _ = collect([tmp_path])
    assert {r["name"]: r["series"] for r in rows} == {"ft": "G1-GN-Native", "noft": "G1-GN-Baseline",
                                                      "half": "G16-LN+PN-Half-NoFT"}
    rows, _ = collect([tmp_path / "noft"])  # alone it keeps the paper's name: not finetuned is what defines it
    assert {r["series"] for r in rows} == {"G1-GN-Baseline"}


def test_every_bad_run_listed_with_reason(tree):
    _, skipped = collect([tree.root])
    reasons = dict(skipped)
    assert len(skipped) == len(tree.bad)
    for name, (run_dir, reason) in tree.bad.items():
        assert reasons[str(run_dir)].startswith(reason), name


def test_bad_types_and_unreadable_error_json(tmp_path):
    write_run(tmp_path / "b", make_metrics(params="big"))
    write_run(tmp_path / "c").joinpath("error.json").write_text("{not json")
    write_run(tmp_path / "d", metrics_text="[1, 2]")
    rows, skipped = collect([tmp_path])
    assert rows == []
    reasons = {Path(d).name: r for d, r in skipped}
    assert reasons["b"] == "bad values (wrong type) for: params"
    assert reasons["c"].startswith("failed: error.json present but unreadable")
    assert reasons["d"] == "metrics.json is a JSON list, expected an object"


def test_overlapping_paths_not_double_counted(tree):
    rows, _ = collect([tree.root, tree.sweep, tree.good["g16_b0_gn_half"]])
    assert len(rows) == tree.n_rows


def test_csv_round_trip(tree, tmp_path):
    rows, _ = collect([tree.root])
    out = write_csv(rows, tmp_path / "sub" / "results.csv")
    with out.open() as f:
        header = next(csv.reader(f))
    assert header == ALL_COLUMNS and header[: len(COLUMNS)] == COLUMNS
    back = load_results(out)
    assert len(back) == len(rows)
    for a, b in zip(rows, back, strict=True):
        assert {k: b[k] for k in COLUMNS} == {k: a[k] for k in COLUMNS}


def test_cli_writes_csv_and_reports_skips(tree, tmp_path, capsys):
    out = tmp_path / "results.csv"
    assert main([str(tree.root), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"skipped {len(tree.bad)} run(s)" in err
    for run_dir, _ in tree.bad.values():
        assert str(run_dir) in err
    with out.open() as f:
        assert len(list(csv.DictReader(f))) == tree.n_rows


def test_cli_no_rows_exits_1_and_writes_nothing(tree, tmp_path, capsys):
    out = tmp_path / "results.csv"
    assert main([str(tree.bad["unfinished"][0]), str(tree.bad["failed"][0]), "--out", str(out)]) == 1
    assert "no complete runs" in capsys.readouterr().err
    assert not out.exists()


def test_cli_missing_path_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "nope"), "--out", str(tmp_path / "r.csv")])
    assert exc.value.code == 2
    assert f"path does not exist: {tmp_path / 'nope'}" in capsys.readouterr().err


def test_failed_write_keeps_old_csv(tree, tmp_path, monkeypatch):
    out = tmp_path / "results.csv"
    out.write_text("old,results\n1,2\n")
    rows, _ = collect([tree.root])
    calls = {"n": 0}
    real = collect_mod.format_value

    def flaky(value):
        calls["n"] += 1
        if calls["n"] > 2 * len(ALL_COLUMNS):  # fail on the third data row, after partial output
            raise OSError("disk full")
        return real(value)

    monkeypatch.setattr(collect_mod, "format_value", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_csv(rows, out)
    assert out.read_text() == "old,results\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "runs"]  # temp file cleaned up
    monkeypatch.setattr(collect_mod, "format_value", real)
    write_csv(rows, out)
    assert len(load_results(out)) == tree.n_rows


def test_module_entry_point(tree, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.csv"
    monkeypatch.setattr(sys, "argv", ["g16net.collect", str(tree.sweep), "--out", str(out)])
    monkeypatch.delitem(sys.modules, "g16net.collect")  # as `python -m` would: a fresh __main__ module
    with pytest.raises(SystemExit) as exc:  # in-process `python -m`: a subprocess would re-import torch
        runpy.run_module("g16net.collect", run_name="__main__", alter_sys=True)
    assert exc.value.code == 0
    assert "CUDA out of memory" in capsys.readouterr().err
    assert len(load_results(out)) == 8


@pytest.fixture
def seed_tree(tmp_path):
    return build_seed_tree(tmp_path / "runs")


def _at(agg, name, res=96):
    return next(a for a in agg if a["name"] == name and a["test_resolution"] == res)


def test_seed_and_config_id_columns(seed_tree):
    rows, skipped = collect([p for dirs in seed_tree.values() for p in dirs])
    assert not skipped
    seeds = {name: sorted({r["seed"] for r in rows if r["name"] == name}) for name in seed_tree}
    assert seeds["g16_b0_ln_pn_half"] == [0, 1, 2] and seeds["g16_b1_gn_half"] == [0, 1]
    ids = {name: {r["config_id"] for r in rows if r["name"] == name} for name in seed_tree}
    assert all(len(v) == 1 for v in ids.values())  # seeds of one configuration share the id...
    assert len(set.union(*ids.values())) == len(seed_tree)  # ...and configurations differ


def test_config_id_ignores_seed_and_location_keys_only(tmp_path):
    write_run(tmp_path / "a", make_metrics(name="a", seed=0))
    write_run(tmp_path / "b", make_metrics(name="b", seed=1, config_extra={"ckpt_path": "last", "overwrite": True}))
    write_run(tmp_path / "c", make_metrics(name="c", seed=2, config_extra={"optimizer": {"lr": 0.1}}))
    write_run(tmp_path / "d", make_metrics(name="d", seed=3, config_extra={"data": {"name": "synthetic",
                                                                                   "split_seed": 1}}))
    rows, _ = collect([tmp_path])
    cid = {r["name"]: r["config_id"] for r in rows}
    assert cid["a"] == cid["b"]
    assert len({cid["a"], cid["c"], cid["d"]}) == 3  # an lr or a data seed is a different configuration
    agg = aggregate(rows)
    assert sorted(a["n"] for a in agg if a["test_resolution"] == 96) == [1, 1, 2]


def test_aggregate_mean_std_n(seed_tree):
    rows, _ = collect([seed_tree["g16_b0_ln_pn_half"][0].parent])
    agg = aggregate(rows)
    assert len(agg) == 9 * 2  # configurations x test resolutions
    three = _at(agg, "g16_b0_ln_pn_half")  # top-1 71 + (0, 1, -1); throughput 110 x (1, 1.01, 0.99)
    assert (three["n"], three["seeds"], three["series"]) == (3, [0, 1, 2], "G16-LN+PN-Half")
    assert three["top1"] == pytest.approx(71.0) and three["top1_std"] == pytest.approx(1.0)
    assert three["top5"] == pytest.approx(96.0) and three["top5_std"] == pytest.approx(1.0)
    assert three["train_throughput"] == pytest.approx(110.0) and three["train_throughput_std"] == pytest.approx(1.1)
    assert three["infer_throughput_std"] == pytest.approx(2.75)  # 275 x 1%
    assert three["params"] == 5914000 and three["run_dir"] is None and len(three["runs"]) == 3
    two = _at(agg, "g16_b1_gn_half")
    assert (two["n"], two["top1"], two["top1_std"]) == (2, pytest.approx(73.0), pytest.approx(0.5 ** 0.5))
    one = _at(agg, "g16_b0_bn_half")
    assert (one["n"], one["top1"], one["top1_std"], one["train_throughput_std"]) == (1, 70.0, None, None)
    assert one["run_dir"] == str(seed_tree["g16_b0_bn_half"][0])
    assert _at(agg, "g1_b0_gn_baseline")["series"] == "G1-GN-Baseline"
    assert _at(agg, "g1_b0_gn_native")["series"] == "G1-GN-Native"


def test_different_device_or_missing_config_is_not_pooled(tmp_path):
    a, b, c = make_seed_runs(name="x")
    b["device"] = "NVIDIA H100"
    del c["config"]  # a run from before metrics.json carried its config
    for i, m in enumerate((a, b, c)):
        write_run(tmp_path / str(i), m)
    rows, _ = collect([tmp_path])
    agg = aggregate(rows)
    assert [a["n"] for a in agg if a["test_resolution"] == 96] == [1, 1, 1]
    assert [a["config_id"] is None for a in agg if a["test_resolution"] == 96] == [False, False, True]


def test_runs_without_throughput_pool_their_seeds(tmp_path):
    """throughput.enabled=false writes NaN img/s (as Python's json does): not measured, so blank, not a crash."""
    for i, m in enumerate(make_seed_runs(name="x")):
        m["train_throughput"] = float("nan")
        for e in m["eval"]:
            e["infer_throughput"] = float("nan")
        write_run(tmp_path / str(i), m)
    rows, skipped = collect([tmp_path])
    assert not skipped and all(r["train_throughput"] is None and r["infer_throughput"] is None for r in rows)
    at96 = next(a for a in aggregate(rows) if a["test_resolution"] == 96)
    assert (at96["n"], at96["top1"], at96["train_throughput"], at96["train_throughput_std"]) == (3, 70.0, None, None)


def test_cli_writes_mean_table(seed_tree, tmp_path, capsys):
    out = tmp_path / "t" / "results.csv"
    assert main([str(seed_tree["g1_b0_gn_native"][0].parent), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "18 rows for 9 configuration(s)" in err and "ddof=1" in err
    with out.open() as f:
        per_run = list(csv.DictReader(f))
    assert len(per_run) == 24 * 2 and {r["seed"] for r in per_run} == {"0", "1", "2"}
    with (tmp_path / "t" / "results_mean.csv").open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == MEAN_COLUMNS
        means = {(r["name"], r["test_resolution"]): r for r in reader}
    assert len(means) == 18
    three, one = means[("g16_b0_ln_pn_half", "96")], means[("g16_b0_bn_half", "96")]
    assert (three["n"], three["seeds"], three["top1_mean"], three["top1_std"]) == ("3", "0 1 2", "71.0", "1.0")
    assert (one["n"], one["seeds"], one["top1_mean"], one["top1_std"]) == ("1", "0", "70.0", "")
    assert three["series"] == "G16-LN+PN-Half" and three["params"] == "5914000"
    assert means[("g1_b0_gn_baseline", "96")]["series"] == "G1-GN-Baseline"
    with pytest.raises(ValueError, match="seed-aggregated table"):  # the means are not a per-run table
        load_results(tmp_path / "t" / "results_mean.csv")


def test_cli_warns_about_repeated_seeds(tmp_path, capsys):
    for i in range(2):
        write_run(tmp_path / str(i), make_metrics(seed=0))
    assert main([str(tmp_path), "--out", str(tmp_path / "r.csv")]) == 0
    assert "has seed 0 in 2 runs (repeats, not independent seeds)" in capsys.readouterr().err


def test_cli_out_must_be_csv_checked_first(tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(collect_cli, "collect", lambda paths: pytest.fail("collected before checking --out"))
    with pytest.raises(SystemExit) as exc:
        main([str(tree.root), "--out", str(tmp_path / "results")])
    assert exc.value.code == 2
    assert f"--out must name a .csv file, got '{tmp_path / 'results'}'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_config_id_of_the_real_composed_config(make_cfg):
    from omegaconf import OmegaConf

    def cid(*overrides):
        return collect_mod.config_id(OmegaConf.to_container(make_cfg(overrides), resolve=True))

    base = cid("series=g1_gn_native")
    assert cid("series=g1_gn_native", "seed=1", "name=elsewhere", "ckpt_path=last", "overwrite=true") == base
    assert cid("series=g1_gn_native", "optimizer.lr=0.1") != base
    assert cid("series=g1_gn_native", "finetune.epochs=0") != base  # not finetuned: another configuration


def _bench_runs(root, train_resolution=32, test_resolutions=(32, 40)):
    """Seeds 0-2 of G16-B0 LN+PN trained without the per-run protocol (NaN img/s), as the CPU Pareto preset does."""
    for i, m in enumerate(make_seed_runs(name="pn", norm="ln_pn", train_resolution=train_resolution)):
        m["eval"] = [dict(m["eval"][0], resolution=r, infer_throughput=float("nan")) for r in test_resolutions]
        m["train_throughput"] = float("nan")
        write_run(root / str(i), m)
    return root


def test_throughput_from_a_real_bench_run(tmp_path, capsys):
    """collect --throughput joins a real `python -m g16net.bench --csv` file: training img/s at the training
    resolution, inference img/s at each test resolution, from the model as trained ([fused], not [aten])."""
    from g16net import bench

    common = ["--models", "g16_efficientnet_b0", "--norms", "ln_pn", "--pn-impl", "fused,aten", "--peers", "",
              "--batch", "2", "--warmup", "1", "--steps", "1", "--repeats", "1", "--num-classes", "10"]
    files = [tmp_path / "bench.csv", tmp_path / "bench_infer40.csv"]  # two runs, as scripts/study.sh makes them
    assert bench.main([*common, "--res", "32", "--csv", str(files[0])]) == 0
    assert bench.main([*common, "--res", "40", "--modes", "infer", "--csv", str(files[1])]) == 0
    measured = {(r["model"], r["res"], r["mode"]): float(r["img/s"]) for f in files for r in csv.DictReader(f.open())}
    out = tmp_path / "t" / "results.csv"
    assert main([str(_bench_runs(tmp_path / "runs")), "--out", str(out), "--throughput", *map(str, files)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6
    for r in rows:
        assert float(r["train_throughput"]) == pytest.approx(measured["g16_efficientnet_b0 [fused]", "32", "train"])
        assert float(r["infer_throughput"]) == pytest.approx(
            measured["g16_efficientnet_b0 [fused]", r["test_resolution"], "infer"])
        assert r["device"].startswith("cpu (") and r["device"].endswith("threads, bench)")
        assert r["throughput_batch_size"] == "2"
    means = {r["test_resolution"]: r for r in csv.DictReader((tmp_path / "t" / "results_mean.csv").open())}
    assert means["40"]["n"] == "3" and float(means["40"]["train_throughput_std"]) == 0.0  # one figure per config


def _bench_csv(path, rows):
    cols = ("model", "norm", "res", "mode", "prec", "layout", "comp", "img/s", "batch", "device", "threads")
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows([(m, "ln_pn", res, mode, "fp32", lay, 0, ips, 32, "cpu", 2) for m, res, mode, lay, ips in rows])
    return path


def test_throughput_bench_missing_a_measurement_names_it_and_writes_nothing(tmp_path, capsys):
    bench = _bench_csv(tmp_path / "b.csv", [("g16_efficientnet_b0", 32, "train", "nchw", 100.0),
                                            ("g16_efficientnet_b0", 32, "infer", "nchw", 300.0),
                                            ("g16_efficientnet_b0", 40, "infer", "nhwc", 90.0)])  # wrong layout
    out = tmp_path / "results.csv"
    with pytest.raises(SystemExit) as exc:
        main([str(_bench_runs(tmp_path / "runs")), "--out", str(out), "--throughput", str(bench)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and not out.exists()
    assert "no measurement of g16_efficientnet_b0 ln_pn 40 px infer fp32" in err
    assert "It holds: g16_efficientnet_b0 ln_pn 32 px infer fp32; g16_efficientnet_b0 ln_pn 32 px train fp32" in err


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("model,norm,res\ng16_efficientnet_b0,ln_pn,32\n", "not a python -m g16net.bench CSV: no column(s) mode, prec"),
    ("twice", "g16_efficientnet_b0 ln_pn 32 px train fp32 is measured twice"),
])
def test_throughput_bench_unusable_is_refused(tmp_path, capsys, content, message):
    bench = tmp_path / "b.csv"
    if content == "twice":
        _bench_csv(bench, [("g16_efficientnet_b0", 32, "train", "nchw", 100.0)] * 2)
    elif content is not None:
        bench.write_text(content)
    with pytest.raises(SystemExit) as exc:
        main([str(_bench_runs(tmp_path / "runs")), "--out", str(tmp_path / "r.csv"), "--throughput", str(bench)])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_the_committed_ablation_table_is_rebuilt_from_its_committed_runs(tmp_path):
    """paper_figs/norm_ablation_cpu/results.csv is what collect makes of the committed run records and bench files
    (every top-1 and img/s the report quotes comes from them)."""
    study = Path(__file__).resolve().parents[1] / "paper_figs" / "norm_ablation_cpu"
    out = tmp_path / "results.csv"
    assert main([str(study / "runs"), "--out", str(out), "--throughput", str(study / "bench.csv"),
                 str(study / "bench_infer.csv")]) == 0
    key = ("series", "norm", "seed", "test_resolution", "top1", "train_throughput", "infer_throughput")

    def table(path):
        rows = [{k: r[k] for k in key} for r in csv.DictReader(path.open())]
        return sorted(rows, key=lambda r: (r["norm"], r["seed"], int(r["test_resolution"])))

    rebuilt, committed = table(out), table(study / "results.csv")
    assert len(committed) == 7 * 3 * 4 and rebuilt == committed
