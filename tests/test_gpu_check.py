"""scripts/gpu_check.sh: its dry run (the GPU check's steps on a CPU at tiny sizes) end to end, its failure
reporting and deadline, and the summary's cross-resolution ratios. CI has no GPU: the dry run is what proves the
check's command lines parse and run before a lent GPU machine's minutes are spent on them."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from .conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run_check(args, env=None, timeout=240):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable, "PYTHONWARNINGS": "ignore", **(env or {})})


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# Slow: eight steps, each a fresh Python with torch (84 s on a 2-core AVX2 CPU); the script's parsing and summary
# have fast tests of their own.
@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_real_results(tmp_path):
    out = tmp_path / "check"
    proc = run_check(["--dry-run", str(out)])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "all steps passed" in proc.stdout

    table = (out / "steps.tsv").read_text().splitlines()
    assert all(line.count("\t") == 3 for line in table), table  # one line per step
    steps = {r["step"]: r["rc"] for r in csv.DictReader(table, delimiter="\t")}
    ran = {"versions", "env", "numerics", "smoke", "profile_fused", "bench_timm_eager", "bench_g16_eager", "summary"}
    assert ran <= set(steps) and all(steps[s] == "0" for s in ran), steps
    for s in ("bench_g16_lnpn_compiled", "bench_timm_compiled", "bench_g16_ln_compiled"):
        assert steps[s] == "skipped"  # no torch.compile in a dry run
    assert "torch" in (out / "versions.log").read_text()

    timm_rows = rows(out / "bench_timm_eager.csv")
    assert {r["model"] for r in timm_rows} == {"efficientnet_b0"}
    assert {(r["mode"], r["layout"]) for r in timm_rows} == {(m, lay) for m in ("train", "infer")
                                                             for lay in ("nchw", "nhwc")}
    g16_rows = rows(out / "bench_g16_eager.csv")
    assert {(r["model"], r["norm"]) for r in g16_rows} == {
        ("efficientnet_b0", "-"), ("g16_efficientnet_b0", "ln"), ("g16_efficientnet_b0", "ln_pn")}
    assert {r["layout"] for r in g16_rows} == {"nchw", "nhwc"} and {r["prec"] for r in g16_rows} == {"bf16"}
    assert all(float(r["img/s"]) > 0 and r["res"] == "32" for r in timm_rows + g16_rows)

    summary = (out / "summary.md").read_text()
    for target in ("- speed: G16-B0 LN+PN train img/s / timm efficientnet_b0", "- price: G16-B0 LN+PN train"):
        line = next(ln for ln in summary.splitlines() if ln.startswith(target))
        assert "best " in line, line  # a number, not n/a
    assert sum(ln.startswith("| train | fused | bf16 |") for ln in summary.splitlines()) == 2  # nchw, nhwc

    profile = (out / "profile_fused.txt").read_text()
    assert "## top 25 by self cpu time" in profile and profile.count("aten::") >= 10

    metrics = json.loads((out / "smoke" / "metrics.json").read_text())
    assert metrics["train_throughput"] > 0 and metrics["eval"]

    suite = ET.parse(out / "numerics.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert int(suite.get("tests")) > 0 and int(suite.get("errors")) == 0  # the CUDA cases, skipped on a CPU


def test_a_failed_step_fails_the_check_and_later_steps_still_run(tmp_path):
    out = tmp_path / "check"
    # An option bench does not know breaks the bench step; the summary, later, still runs and says what is missing.
    proc = run_check(["--dry-run", str(out)], env={"STEPS": "bench_timm_eager,summary", "BENCH_ARGS": "--nope"})
    assert proc.returncode == 1
    assert proc.stdout.strip().splitlines()[-1] == "FAILED steps: bench_timm_eager summary"
    assert "unrecognized arguments: --nope" in (out / "bench_timm_eager.log").read_text()
    assert "missing: " in (out / "summary.md").read_text()
    assert not (out / "versions.log").exists()  # STEPS ran only the named steps

    # The deadline: a step that can no longer start counts as failed; the summary keeps its reserve and runs.
    proc = run_check(["--dry-run", str(tmp_path / "late")], env={"STEPS": "env,summary", "BUDGET_S": "0"})
    assert proc.returncode == 1 and "env: not run: the 0 s budget is spent" in proc.stdout
    assert (tmp_path / "late" / "summary.md").exists()


def test_help_and_bad_option():
    proc = run_check(["--help"], timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: scripts/gpu_check.sh")
    assert run_check(["--bogus"], timeout=30).returncode == 2


def _summary_module():
    spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "scripts" / "gpu_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(path, table):
    cols = ["model", "norm", "res", "mode", "prec", "layout", "comp", "img/s", "peak_MB", "device"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(table)


def test_summary_divides_across_resolutions_per_impl_layout_and_compile(tmp_path):
    peer, g16, compiled = tmp_path / "peer.csv", tmp_path / "g16.csv", tmp_path / "compiled.csv"
    _write(peer, [["efficientnet_b0", "-", 224, "train", "bf16", "nchw", 0, 1000, 9000, "cuda"],
                  ["efficientnet_b0", "-", 224, "train", "bf16", "nchw", 1, 1500, 8000, "cuda"]])
    _write(g16, [["efficientnet_b0", "-", 160, "train", "bf16", "nchw", 0, 2000, 5000, "cuda"],  # not the 224 peer
                 ["g16_efficientnet_b0", "ln", 160, "train", "bf16", "nchw", 0, 1400, 7000, "cuda"],
                 ["g16_efficientnet_b0 [fused]", "ln_pn", 160, "train", "bf16", "nchw", 0, 1260, 7500, "cuda"],
                 ["g16_efficientnet_b0 [triton]", "ln_pn", 160, "train", "bf16", "nchw", 0, 1400, 7100, "cuda"]])
    # a compiled LN+PN row without brackets (one impl in that run) and without its LN row
    _write(compiled, [["g16_efficientnet_b0", "ln_pn", 160, "train", "bf16", "nchw", 1, 1800, 6000, "cuda"]])
    md = tmp_path / "summary.md"
    s = _summary_module()
    assert s.main(["--peer", str(peer), "--g16", str(g16), str(compiled), str(tmp_path / "gone.csv"),
                   "--pn-impls", "triton", "--out", str(md)]) == 0
    text = md.read_text()
    assert "| train | fused | bf16 | nchw | 0 | 1260 | 7500 | 1000 | 9000 | 1400 | 1.26 MISS | 0.90 MISS |" in text
    assert "| train | triton | bf16 | nchw | 0 | 1400 | 7100 | 1000 | 9000 | 1400 | 1.40 ok | 1.00 ok |" in text
    assert "| train | triton | bf16 | nchw | 1 | 1800 | 6000 | 1500 | 8000 | - | 1.20 MISS | n/a |" in text
    assert "- speed: " in text and "best 1.40 (triton, nchw, compile 0); 1/3 settings meet it" in text
    assert "best 1.00 (triton, nchw, compile 0); 1/2 settings meet it" in text
    assert f"missing: {tmp_path / 'gone.csv'}" in text
    assert "timm efficientnet_b0 at 224 px" in text and "LN+PN at 160 px" in text
    assert s.main(["--peer", str(tmp_path / "gone.csv"), "--out", str(md)]) == 1  # nothing to summarise
