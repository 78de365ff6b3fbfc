from collections import Counter

import pytest
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.figure import Figure
from PIL import Image

from g16net.figs import main
from g16net.studies import figs
from g16net.studies.collect import collect, write_csv, write_tables
from g16net.studies.figs import make_figures, norm_groups, pick_rows
from g16net.studies.results import aggregate, load_paper_points, load_results, pareto_front

try:  # tests/ is on sys.path under pytest's default rootdir-less import mode
    from results_fixtures import build_seed_tree, build_tree, make_metrics, make_seed_runs, write_run
except ImportError:  # tests/ became a package
    from tests.results_fixtures import build_seed_tree, build_tree, make_metrics, make_seed_runs, write_run

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
    rows = aggregate(load_results(results_csv))
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
    groups = norm_groups(pick_rows(aggregate(load_results(results_csv))))
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


@pytest.fixture(scope="module")
def seed_csv(tmp_path_factory):
    root = tmp_path_factory.mktemp("seedfigs")
    rows, _ = collect([p for dirs in build_seed_tree(root / "runs").values() for p in dirs])
    return write_tables(rows, root / "results.csv")[0]


def _draw(rows, xcol="train_macs", scale=1e6, higher=False):
    ax = Figure().add_subplot()
    figs._draw_fronts(ax, rows, xcol, scale, higher, figs._Styler())
    lines = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    return ax, lines, bars


def _segments(bar: ErrorbarContainer, axis: int) -> list[tuple[float, float]]:
    """(low, high) of each error bar along x (0) or y (1)."""
    vertical = bar.lines[2][-1] if axis == 1 else bar.lines[2][0]
    return sorted((round(s[0][axis], 6), round(s[1][axis], 6)) for s in vertical.get_segments())


def test_fronts_on_means_with_error_bars_and_seeds(seed_csv):
    rows = pick_rows(aggregate(load_results(seed_csv)))
    ax, lines, bars = _draw(rows)
    front = lines["G16-GN-Half"]  # b0 seeds 68.5/69.5/70.5, b1 seeds 72.5/73.5: the front joins the means
    assert list(front.get_ydata()) == pytest.approx([69.5, 73.0]) and list(front.get_xdata()) == [52, 95]
    assert set(lines) == {"G1-GN-Baseline", "G1-GN-Native", "G16-GN-Native", "G16-GN-Half", "G16-LN+PN-Native",
                          "G16-LN+PN-Half", "G16-BN-Half"}
    ys = sorted(s for b in bars for s in _segments(b, 1))
    assert (68.5, 70.5) in ys and (70.0, 72.0) in ys  # G16-GN-Half b0 and G16-LN+PN-Half b0: mean +- 1
    assert len(ys) == 8  # every config with >1 seed has a bar; G16-BN-Half (n=1) has none
    seeds = [tuple(o) for c in ax.collections if c.get_alpha() == 0.3 for o in c.get_offsets()]
    assert (52.0, 68.5) in seeds and (52.0, 70.5) in seeds and len(seeds) == 8 * 3 - 1


def test_front_ignores_a_lucky_seed(tmp_path):
    """A dominated configuration stays off the front even when one of its seeds beats the other's mean."""
    for i, m in enumerate(make_seed_runs(name="small", top1=70.0, train_macs=50e6)
                          + make_seed_runs(name="big", size="b1", top1=69.5, train_macs=90e6)):
        write_run(tmp_path / str(i), m)
    rows, _ = collect([tmp_path])
    _, lines, _ = _draw(pick_rows(aggregate(rows)))
    assert list(lines["G16-LN+PN-Half"].get_xdata()) == [50]  # big's seed 1 (70.5) would have made the front


def test_throughput_axes_get_x_error_bars(seed_csv):
    rows = pick_rows(aggregate(load_results(seed_csv)))
    _, _, bars = _draw(rows, "train_throughput", 1.0, True)
    xs = [s for b in bars for s in _segments(b, 0)]
    assert (108.9, 111.1) in xs  # G16-LN+PN-Half b0: 110 img/s +- 1%


def test_single_seed_draws_without_bars(results_csv):
    _, lines, bars = _draw(pick_rows(aggregate(load_results(results_csv))))
    assert bars == [] and lines


def test_seed_figures_and_ablation_error_bars(seed_csv, tmp_path, monkeypatch):
    drawn = {}
    save = figs._save
    monkeypatch.setattr(figs, "_save", lambda fig, out, stem: drawn.setdefault(stem, fig) and save(fig, out, stem))
    paths = make_figures(seed_csv, tmp_path, paper_overlay=True)
    assert_figures(paths, tmp_path, PARETO_STEMS + ["norm_ablation"])
    assert "ddof=1" in drawn["pareto_macs"].axes[0].get_legend().get_title().get_text()
    top1 = drawn["norm_ablation"].axes[0]
    by_norm = {c.get_label(): c for c in top1.containers if isinstance(c, BarContainer)}
    # groups: b0 Half, b0 Native, b1 Half; norms BN, GN, LN+PN (BN only in b0 Half, with one seed)
    assert [b.get_height() for b in by_norm["LN+PN"]] == pytest.approx([71.0, 72.0, 74.0])
    assert _segments(by_norm["LN+PN"].errorbar, 1) == [(70.0, 72.0), (71.0, 73.0), (73.0, 75.0)]
    assert by_norm["BN"].errorbar is None and [b.get_height() for b in by_norm["BN"]] == [70.0]
    assert "ddof=1" in drawn["norm_ablation"].get_suptitle()


def test_ablation_without_throughput_draws_the_accuracy_panel_only(tmp_path, monkeypatch):
    """A study trained with throughput.enabled=false: no empty throughput axes in the ablation figure."""
    for i, m in enumerate(make_seed_runs(name="a", norm="gn") + make_seed_runs(name="b", norm="ln_pn")):
        m["train_throughput"] = float("nan")
        for e in m["eval"]:
            e["infer_throughput"] = float("nan")
        write_run(tmp_path / "runs" / str(i), m)
    rows, _ = collect([tmp_path / "runs"])
    drawn = {}
    save = figs._save
    monkeypatch.setattr(figs, "_save", lambda fig, out, stem: drawn.setdefault(stem, fig) and save(fig, out, stem))
    make_figures(write_tables(rows, tmp_path / "results.csv")[0], tmp_path / "figs")
    titles = [ax.get_title() for ax in drawn["norm_ablation"].axes]
    assert titles == ["Top-1 accuracy per norm"]


def test_figs_refuses_the_mean_table(seed_csv, tmp_path, capsys):
    assert main([str(seed_csv.with_name("results_mean.csv")), "--out", str(tmp_path)]) == 1
    assert "seed-aggregated table; pass the per-run results CSV" in capsys.readouterr().err
