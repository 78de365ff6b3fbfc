from collections import Counter

import pytest
from PIL import Image

from g16net.collect import collect, write_csv
from g16net.figs import main, make_figures, norm_groups, pick_rows
from g16net.results import load_paper_points, load_results, pareto_front

try:  # tests/ is on sys.path under pytest's default rootdir-less import mode
    from results_fixtures import build_tree, make_metrics, write_run
except ImportError:  # tests/ became a package
    from tests.results_fixtures import build_tree, make_metrics, write_run

PARETO_STEMS = ["pareto_macs", "pareto_params", "pareto_train_throughput", "pareto_infer_throughput",
                "pareto"]


@pytest.fixture(scope="module")
def results_csv(tmp_path_factory):
    root = tmp_path_factory.mktemp("figs")
    rows, _ = collect([build_tree(root / "runs").root])
    return write_csv(rows, root / "results.csv")


@pytest.fixture(scope="module")
def default_figs(results_csv):
    out = results_csv.parent / "figs"
    return out, make_figures(results_csv, out)


def assert_figures(paths, out_dir, stems):
    assert sorted(paths) == sorted(out_dir / f"{s}.{ext}" for s in stems for ext in ("png", "pdf"))
    for p in paths:
        head = p.read_bytes()[:8]
        assert head.startswith(b"\x89PNG" if p.suffix == ".png" else b"%PDF"), p
        assert p.stat().st_size > 5000, p


def test_pareto_front_cost_axis():
    pts = [(1, 50), (2, 60), (2, 55), (3, 58), (4, 70), (0.5, 40), (4, 70), (5, 69)]
    # (2,55) and (3,58) lose to (2,60); the second (4,70) is a duplicate; (5,69) loses to (4,70).
    assert pareto_front(pts) == [5, 0, 1, 4]


def test_pareto_front_throughput_axis():
    pts = [(100, 50), (200, 40), (150, 45), (120, 40), (50, 60), (40, 55)]
    # Higher x is better: (120,40) loses to (150,45), (40,55) to (50,60).
    assert pareto_front(pts, higher_x_better=True) == [4, 0, 2, 1]
    assert pareto_front([]) == []


def test_pick_rows(results_csv):
    rows = load_results(results_csv)
    headline = {r["name"]: r["test_resolution"] for r in pick_rows(rows, "headline")}
    assert headline == {"g16_b0_ln_pn_half": 96, "g16_b0_gn_half": 96, "g16_b0_bn_half": 96,
                        "g16_b1_ln_pn_half": 120, "g1_b0_gn_native": 96}
    best = {r["name"]: r["test_resolution"] for r in pick_rows(rows, "best")}
    assert best["g1_b0_gn_native"] == 128  # 69.0 at 128 beats the headline 68.0 at 96
    for r in rows:  # older runs without headline_resolution fall back to the native resolution
        r["headline"] = None
    fallback = {r["name"]: r["test_resolution"] for r in pick_rows(rows)}
    assert fallback == headline
    for r in rows:  # ...and without either, to the best top-1
        r["native_resolution"] = None
    assert pick_rows(rows) == pick_rows(rows, "best")


def test_norm_groups(results_csv):
    groups = norm_groups(pick_rows(load_results(results_csv)))
    assert list(groups) == [("b0", 16, 4, "half", True)]
    assert sorted(groups[("b0", 16, 4, "half", True)]) == ["bn", "gn", "ln_pn"]


def test_make_figures_all_files(default_figs):
    out, paths = default_figs
    assert_figures(paths, out, PARETO_STEMS + ["norm_ablation"])


def test_paper_overlay_adds_panel(results_csv, default_figs, tmp_path):
    plain, plain_paths = default_figs
    overlay = make_figures(results_csv, tmp_path, paper_overlay=True, pick="best")
    assert [p.name for p in overlay] == [p.name for p in plain_paths]
    width = lambda d, stem: Image.open(d / f"{stem}.png").size[0]
    for stem in ("pareto_macs", "pareto_train_throughput"):  # gained a paper panel
        assert width(tmp_path, stem) > 1.4 * width(plain, stem)
    assert width(tmp_path, "pareto_params") < 1.2 * width(plain, "pareto_params")


def test_ablation_skipped_without_norm_only_groups(tmp_path, capsys):
    write_run(tmp_path / "runs" / "a", make_metrics(name="a", norm="ln_pn", size="b0"))
    write_run(tmp_path / "runs" / "b", make_metrics(name="b", norm="gn", size="b1"))
    rows, _ = collect([tmp_path / "runs"])
    paths = make_figures(write_csv(rows, tmp_path / "r.csv"), tmp_path / "figs")
    assert_figures(paths, tmp_path / "figs", PARETO_STEMS)
    assert "norm_ablation figure skipped" in capsys.readouterr().out


def test_paper_points():
    pts = load_paper_points()
    assert len(pts) == 36
    series = ["G1-GN-Baseline", "G1-GN-Native", "G16-GN-Native", "G16-GN-Half", "G16-LN+PN-Native",
              "G16-LN+PN-Half"]
    assert Counter(p["series"] for p in pts) == dict.fromkeys(series, 6)
    assert sum(p["train_throughput"] is None for p in pts) == 4
    b0 = next(p for p in pts if p["series"] == "G16-LN+PN-Half" and p["size"] == "b0")
    assert (b0["top1"], b0["train_throughput"], b0["train_gmacs"], b0["finetuned"]) == (78.29, 43400, 0.325,
                                                                                          True)


def test_paper_only_cli(tmp_path, capsys):
    assert main(["--paper-only", "--out", str(tmp_path)]) == 0
    stems = ["paper_pareto_macs", "paper_pareto_train_throughput", "paper_pareto"]
    assert_figures(sorted(tmp_path.iterdir()), tmp_path, stems)


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path)])
    assert exc.value.code == 2
    assert main([str(tmp_path / "missing.csv"), "--out", str(tmp_path)]) == 1
    assert f"results CSV not found: {tmp_path / 'missing.csv'}" in capsys.readouterr().err
