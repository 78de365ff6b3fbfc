import csv
import runpy
import sys
from pathlib import Path

import pytest

from g16net import collect as collect_mod
from g16net.collect import collect, find_run_dirs, main, write_csv
from g16net.results import ALL_COLUMNS, COLUMNS, load_results

try:  # tests/ is on sys.path under pytest's default rootdir-less import mode
    from results_fixtures import build_tree, make_metrics, write_run
except ImportError:  # tests/ became a package
    from tests.results_fixtures import build_tree, make_metrics, write_run

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


def test_unfinetuned_twin_gets_baseline_series(tmp_path):
    kw = dict(group_size=1, norm="gn", schedule="native")
    write_run(tmp_path / "ft", make_metrics(name="ft", finetuned=True, **kw))
    write_run(tmp_path / "noft", make_metrics(name="noft", finetuned=False, **kw))
    rows, _ = collect([tmp_path])
    assert {r["name"]: r["series"] for r in rows} == {"ft": "G1-GN-Native", "noft": "G1-GN-Baseline"}
    rows, _ = collect([tmp_path / "noft"])  # alone, nothing to tell apart
    assert {r["series"] for r in rows} == {"G1-GN-Native"}


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
