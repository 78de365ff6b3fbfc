"""The user docs say only what runs: every command in README.md, CHANGELOG.md, docs/*.md and paper_figs/README.md
is checked as written, and every relative link and image resolves.

- `python -m g16net.train ...` (or `g16net-train`) composes with Hydra from the package's conf/ and passes
  `check_config`, the checks a run makes before any data is read. A sweep (`-m`) is checked once per value of each
  swept key. A `--config-dir` folder that the docs write out file by file is built from them and composed with;
  one they only sketch is not here, so only the line's override grammar is parsed.
- `python -m g16net.eval ...` composes `conf/eval.yaml` (the run dir it names does not exist here).
- `python -m g16net.collect|figs|bench ...`, `python scripts/<x>.py ...`: their argparse parsers accept the
  arguments (parsing stops before any work).
- `scripts/...` paths exist; the study scripts' Hydra overrides compose with their preset.
- No commit hashes, the words "issue" or "session" in user docs or conf/ comments.
"""

import argparse
import importlib
import importlib.util
import re
import runpy
import shlex
import subprocess
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import open_dict

from g16net.checks.config_check import check_config

from .conftest import ROOT, compose_cfg

DOC_FILES = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "paper_figs" / "README.md",
             *sorted((ROOT / "docs").glob("*.md"))]
# Written by other work streams; links to them may come before the pages do.
PENDING_PAGES = {ROOT / "docs" / "config.md", ROOT / "docs" / "diagnostics.md"}
ARGPARSE_CLIS = ("collect", "figs", "bench", "diagnose")
STUDY_SCRIPTS = {"study.sh": None, "pareto_study.sh": "pareto", "norm_ablation.sh": "norm_ablation"}
# A synopsis (`python -m g16net.train [key=value ...]`) names a form, not a command; code blocks hold only commands.
SYNOPSIS = re.compile(r" \[|\.\.\.|\||<")


def _rel(path):
    return path.relative_to(ROOT)


def _fenced_commands(text):
    """Shell lines of ```bash blocks, continuation lines joined, with their line numbers."""
    out, in_block, lang, pending, start = [], False, "", "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block, lang = (not in_block), line.strip()[3:].strip()
            continue
        if not in_block or lang not in ("bash", "sh", "shell"):
            continue
        if not pending:
            start = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def _inline_commands(text):
    """`python -m g16net.<x> ...` / `g16net-<x> ...` inline code spans that are commands, not synopses."""
    out = []
    for m in re.finditer(r"`((?:python -m g16net\.|g16net-)[^`]+)`", text):
        cmd = " ".join(m.group(1).split())
        if not SYNOPSIS.search(cmd):
            out.append((text.count("\n", 0, m.start()) + 1, cmd))
    return out


def _commands():
    found = []
    for path in DOC_FILES:
        if not path.exists():
            continue
        text = path.read_text()
        for line_no, line in [*_fenced_commands(text), *_inline_commands(text)]:
            for argv in _simple_commands(line):
                found.append(pytest.param(argv, id=f"{_rel(path)}:{line_no}:{' '.join(argv)[:60]}"))
    return found


def _simple_commands(line):
    """The argv of each command of a shell line (split at ;, &&, ||, |), without VAR=value prefixes."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lex.whitespace_split, lex.commenters = True, "#"
    argvs = [[]]
    for token in lex:
        if token and set(token) <= set(";&|"):
            argvs.append([])
        else:
            argvs[-1].append(token)
    for argv in argvs:
        while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
            argv = argv[1:]
        if argv:
            yield argv


def _module(argv):
    """'train' for `python -m g16net.train ...` or `g16net-train ...`; None for other commands."""
    if argv[:2] == ["python", "-m"] and len(argv) > 2 and argv[2].startswith("g16net."):
        return argv[2].split(".", 1)[1], argv[3:]
    if argv[0].startswith("g16net-"):
        return argv[0].split("-", 1)[1], argv[1:]
    return None, argv


def _sweep_variants(overrides):
    """Override lists covering every value of every swept key (the others at their first value)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    values = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.input_line] for o in parsed]
    for o, vals in zip(parsed, values):  # a swept value as an override line
        if o.is_sweep_override():
            vals[:] = [f"{o.get_key_element()}={v}" for v in vals]
    base = [v[0] for v in values]
    variants = [base]
    for i, vals in enumerate(values):
        variants += [base[:i] + [v] + base[i + 1:] for v in vals[1:]]
    return variants


class _Parsed(Exception):
    pass


def _split_flags(args, with_value):
    """(flags, overrides): the arguments starting with -, and the rest, a flag of `with_value` taking the next."""
    flags, overrides, it = [], [], iter(args)
    for a in it:
        if a.startswith("-"):
            flags.append(a)
            if a in with_value:
                next(it, None)
        else:
            overrides.append(a)
    return flags, overrides


def _documented_config_dirs(tmp_path):
    """The config folders the docs build file by file (a yaml block right after its path in backticks), written
    under tmp_path: {folder as the docs name it: its copy}."""
    dirs = {}
    for path in DOC_FILES:
        if not path.exists():
            continue
        for m in re.finditer(r"`([\w.-]+)/([\w/.-]+\.yaml)`[^\n]*:\n\n```yaml\n(.*?)```", path.read_text(), re.S):
            folder, rel, body = m.groups()
            dest = tmp_path / "docs_config_dirs" / folder / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(body)
            dirs[folder] = dest.parents[len(Path(rel).parts) - 1]
    return dirs


def _check_train(args, config_dirs=None):
    flags, overrides = _split_flags(args, with_value=("--config-dir", "-cd", "--cfg", "-c", "--info"))
    multirun = "-m" in flags or "--multirun" in flags
    flags = [f for f in flags if f not in ("-m", "--multirun")]
    given = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config-dir", "-cd")]
    if given:
        if not all(d in (config_dirs or {}) for d in given):
            OverridesParser.create().parse_overrides(overrides)  # a user's folder the docs only sketch: grammar
            return
        search = ",".join(f"file://{config_dirs[d]}" for d in given)
        overrides = [f"hydra.searchpath=[{search}]", *overrides]
        flags = [f for f in flags if f not in ("--config-dir", "-cd")]
    assert set(flags) <= {"--help", "--cfg", "--info", "--resolve"}, f"unexpected flags {flags}"
    variants = _sweep_variants(overrides) if multirun else [overrides]
    for variant in variants:
        cfg = compose_cfg(variant, return_hydra_config=True)  # hydra.* and hydra/launcher overrides compose too
        with open_dict(cfg):
            del cfg["hydra"]
        check_config(cfg)


def _check_eval(args):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        compose("eval", overrides=[a for a in args if not a.startswith("-")], return_hydra_config=True)


def _check_argparse(monkeypatch, run, args):
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        original(self, argv, namespace)  # a bad argument exits 2 here
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed):
        run(args)


def _check_script(monkeypatch, argv):
    if argv[0] in ("python", "bash") and len(argv) > 1 and argv[1].startswith("scripts/"):
        runner, argv = argv[0], argv[1:]
    elif argv[0].startswith("scripts/"):
        runner = None
    else:
        return False
    path = ROOT / argv[0]
    assert path.is_file(), f"{argv[0]} does not exist"
    name = path.name
    if runner == "python":
        def run(args):
            monkeypatch.setattr("sys.argv", [str(path), *args])
            runpy.run_path(str(path), run_name="__main__")
        _check_argparse(monkeypatch, run, argv[1:])
    elif name in STUDY_SCRIPTS and "--help" not in argv:
        study = STUDY_SCRIPTS[name]
        rest = argv[1:] if study else argv[2:]
        study = study or argv[1]
        scale, overrides = rest[0], [a for i, a in enumerate(rest[1:], 1) if a != "--out" and rest[i - 1] != "--out"]
        preset = f"{study}_cpu" if scale == "cpu" else study
        _check_train(["-m", f"sweep={preset}", *overrides])
    return True


@pytest.mark.parametrize("argv", _commands())
def test_documented_command_runs_as_written(argv, monkeypatch, tmp_path):
    module, args = _module(argv)
    if module is None:
        _check_script(monkeypatch, argv)  # anything else (pip, pytest, tmux, ...) is not ours to check
        return
    assert importlib.util.find_spec(f"g16net.{module}") is not None, f"no module g16net.{module}"
    if args == [] and module not in ("train", "eval"):
        return  # the tool named in a sentence ("then `python -m g16net.collect` on its folder")
    if args in ([], ["--help"]):
        return
    if module == "train":
        _check_train(args, _documented_config_dirs(tmp_path))
    elif module == "eval":
        _check_eval(args)
    elif module in ARGPARSE_CLIS:
        cli = importlib.import_module(f"g16net.{module}")
        _check_argparse(monkeypatch, cli.parse_args if module in ("bench", "diagnose") else cli.main, args)
    else:
        pytest.fail(f"python -m g16net.{module}: no check for this command line tool; add one to this test")


def _slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped (but - and _), spaces to -."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path):
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)  # a "# comment" in a block is no heading
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def _links():
    found = []
    for path in DOC_FILES:
        if not path.exists():
            continue
        text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
        for m in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)\)", text):
            target = m.group(1)
            if not re.match(r"[a-z]+:", target):
                found.append(pytest.param(path, target, id=f"{_rel(path)}:{target}"))
    return found


@pytest.mark.parametrize("doc, target", _links())
def test_relative_link_resolves(doc, target):
    file, _, anchor = target.partition("#")
    dest = (doc.parent / file).resolve() if file else doc
    if dest in PENDING_PAGES and not dest.exists():
        pytest.skip(f"{_rel(dest)} is written elsewhere and not here yet")
    assert dest.exists(), f"{_rel(doc)} links to {target}, which does not exist"
    if anchor and dest.suffix == ".md":
        assert anchor in _anchors(dest), f"{_rel(doc)} links to {target}: no heading with that anchor"


# 7-40 hex digits with a letter and a digit; not the mantissa of a float such as 1.52587890625e-05
HASH = re.compile(r"(?<!\w)(?<!\d\.)(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?!\w)")
PROVENANCE = re.compile(r"\b(issues?|sessions?)\b", re.I)


def _user_text():
    for path in DOC_FILES:
        if path.exists():
            yield path, path.read_text().splitlines()
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        # comments only: a value may legitimately look like anything
        yield path, [line[line.index("#"):] for line in path.read_text().splitlines() if "#" in line]


def test_user_docs_carry_no_repository_provenance():
    """A result names its command, machine, versions and date; commit hashes and work-tracking words mean nothing
    to a reader of a released copy."""
    bad = [f"{_rel(path)}: {line.strip()[:100]}" for path, lines in _user_text() for line in lines
           if HASH.search(line) or PROVENANCE.search(line)]
    assert not bad, "\n".join(bad)


def test_readme_holds_exactly_the_two_setup_commands_ci_runs():
    """The extraction of .ci/run, run on the README: two commands, the first installing and running the main job."""
    extract = ("sed -n '/<!-- setup:begin -->/,/<!-- setup:end -->/p' README.md | "
               "grep -v -e '^<!--' -e '^```' -e '^ *$' -e '^#'")
    assert extract in (ROOT / ".ci" / "run").read_text().replace("\\\n", "")
    cmds = subprocess.run(["bash", "-c", extract], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    cmds = cmds.splitlines()
    assert len(cmds) == 2 and "pip install" in cmds[0] and "python -m g16net.train" in cmds[0], cmds
