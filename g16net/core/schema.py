"""What a config key allows, declared once: dataclasses whose fields carry a `Rule` (type, range or choices, what
null and auto mean, a one-line description). The yaml files keep the defaults; the schema says what is allowed.

    @dataclass
    class Ema:
        decay: Any = key("per paper epoch: the weight of the old average", float, gt=0, lt=1)

A section is a field whose default is another schema dataclass (`section(Ema)`). `problems(Schema, values)`
returns one `key=value is invalid; allowed: ...` line per bad key, so a command learns all of them at once;
`python -m g16net.checks.config_doc` prints the reference (docs/config.md) from the same declarations.

The walk is plain Python over a plain dict: no Hydra type coercion (OmegaConf 2.3 has no unions such as
"auto or a number"), so an override like `ema.decay=auto` reaches the check as typed and is named there.
"""

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

MISSING = "???"  # OmegaConf's marker for a mandatory value nobody set
_TYPES = {int: "int", float: "float", bool: "bool", str: "str", list: "list", dict: "dict", Any: "any"}


@dataclass(frozen=True)
class Rule:
    """What one key allows. `test` adds a condition the type and range cannot say; `allowed` then describes the
    whole rule and `examples` gives one (valid, invalid) pair for the schema's own test."""
    doc: str
    type: str = "any"  # int | float | bool | str | list | dict | any
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = ()
    null: str | None = None  # what null means; None = null is not allowed
    auto: str | None = None  # what 'auto' means; None = 'auto' is not allowed
    item: "Rule | None" = None  # lists: what each item allows
    length: int | None = None  # lists: exactly this many items
    ascending: bool = False  # lists: items in non-decreasing order
    empty: bool = False  # lists: [] is allowed
    optional: bool = False  # the key may be absent
    test: Callable[[Any], bool] | None = None
    allowed: str | None = None
    examples: tuple = ()
    name: str | None = None  # the key, where it is no Python name (`import`)


def rule(doc: str = "", type=Any, *, ge=None, gt=None, le=None, lt=None, **kw) -> Rule:
    """A Rule from Python types and bounds: rule("...", float, ge=0, lt=1)."""
    return Rule(doc, _TYPES[type], lo=gt if gt is not None else ge, hi=lt if lt is not None else le,
                lo_open=gt is not None, hi_open=lt is not None, **kw)


def key(doc: str, type=Any, **kw):
    """A schema field: `name: Any = key("what it is", int, ge=1, null="what null means")`."""
    return field(default=None, metadata={"rule": rule(doc, type, **kw)})


def section(schema: type, doc: str = "", optional: bool = False):
    """A nested section declared by another schema dataclass."""
    return field(default_factory=schema, metadata={"doc": doc, "optional": optional})


def key_name(f) -> str:
    r = f.metadata.get("rule")
    return r.name if r is not None and r.name else f.name


def rules(schema: type, prefix: str = ""):
    """(dotted key, Rule or schema dataclass, section doc) for every key and section of `schema`, depth first."""
    for f in fields(schema):
        k = prefix + key_name(f)
        if "rule" in f.metadata:
            yield k, f.metadata["rule"], ""
        else:
            sub = f.default_factory
            yield k, sub, f.metadata.get("doc", "")
            yield from rules(sub, k + ".")


# ---- checking ----------------------------------------------------------------------------------------------------

def is_int(v) -> bool:
    """An int that is not a bool (YAML's true is a Python int too)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def accepts(r: Rule, v) -> bool:
    if isinstance(v, str) and v == MISSING:
        return False
    if v is None:
        return r.null is not None
    if r.auto is not None and isinstance(v, str) and v == "auto":
        return True
    if r.choices:
        if not any(type(v) is type(c) and v == c for c in r.choices):
            return False
    elif not _type_ok(r, v):
        return False
    return r.test is None or bool(r.test(v))


def _type_ok(r: Rule, v) -> bool:
    t = r.type
    if t == "bool":
        return isinstance(v, bool)
    if t == "str":
        return isinstance(v, str) and v.strip() != ""
    if t == "dict":
        return isinstance(v, Mapping)
    if t in ("int", "float"):
        if not (is_int(v) if t == "int" else _is_num(v)):
            return False
        return _in_range(r, v)
    if t == "list":
        if not isinstance(v, (list, tuple)) or (r.length is not None and len(v) != r.length):
            return False
        if not v:
            return r.empty
        if r.item is not None and not all(accepts(r.item, x) for x in v):
            return False
        return not r.ascending or all(a <= b for a, b in zip(v, v[1:]))
    return True


def _in_range(r: Rule, v) -> bool:
    if r.lo is not None and (v <= r.lo if r.lo_open else v < r.lo):
        return False
    return r.hi is None or (v < r.hi if r.hi_open else v <= r.hi)


def fmt(v) -> str:
    """A value as it is written on the command line."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _range_text(r: Rule) -> str:
    if r.lo is not None and r.hi is not None:
        return f" in {'(' if r.lo_open else '['}{fmt(r.lo)}, {fmt(r.hi)}{')' if r.hi_open else ']'}"
    if r.lo is not None:
        return f" {'>' if r.lo_open else '>='} {fmt(r.lo)}"
    if r.hi is not None:
        return f" {'<' if r.hi_open else '<='} {fmt(r.hi)}"
    return ""


def describe(r: Rule) -> str:
    """What `r` allows, in words: the text after `allowed:`."""
    if r.allowed:
        core = r.allowed
    elif r.choices:
        core = ", ".join(fmt(c) for c in r.choices)
    elif r.type == "bool":
        core = "true or false"
    elif r.type in ("int", "float"):
        positive = r.type == "int" and r.lo == 1 and not r.lo_open and r.hi is None
        core = "a positive integer" if positive else ("an integer" if r.type == "int" else "a number") + _range_text(r)
    elif r.type == "list":
        core = f"a list of {r.length} items" if r.length else "a list" if r.empty else "a non-empty list"
        core += f", each {describe(r.item)}" if r.item else ""
        core += ", ascending" if r.ascending else ""
    elif r.type == "str":
        core = "a non-empty string"
    elif r.type == "dict":
        core = "a mapping"
    else:
        core = "any value"
    if r.auto is not None:
        core += f"; auto = {r.auto}"
    if r.null is not None:
        core += f"; null = {r.null}"
    return core


def invalid(k: str, v, r: Rule) -> str:
    what = "is not set (required)" if isinstance(v, str) and v == MISSING else "is invalid"
    return f"{k}={v!r} {what}; allowed: {describe(r)}"


def unknown(k: str, v, known) -> str:
    match = difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.5)
    return (f"unknown config key {k!r} (value {v!r}); nothing reads it"
            f"{f', did you mean {match[0]!r}?' if match else ''} (every key: docs/config.md)")


def problems(schema: type, values: Mapping, prefix: str = "", extra: Callable[[str, Any], str | None] | None = None,
             ) -> list[str]:
    """One line per bad key of `values` (a plain dict) against `schema`. Keys the schema does not declare go to
    `extra(key, value)`, which returns a problem line or None (accepted); without it they are unknown."""
    out = []
    declared = {key_name(f): f for f in fields(schema)}
    for name, f in declared.items():
        k = prefix + name
        if name not in values:
            optional = f.metadata["rule"].optional if "rule" in f.metadata else f.metadata.get("optional")
            if not optional:
                out.append(f"{k} is not set; every config sets it (docs/config.md)")
            continue
        v = values[name]
        if "rule" in f.metadata:
            if not accepts(f.metadata["rule"], v):
                out.append(invalid(k, v, f.metadata["rule"]))
        elif isinstance(v, Mapping):
            sub = f.default_factory
            out += problems(sub, v, k + ".", getattr(sub, "extra_key", None))
        else:
            out.append(f"{k}={v!r} is invalid; allowed: a mapping with keys {', '.join(_names(f.default_factory))}")
    for name in values:
        if name not in declared:
            k, v = prefix + str(name), values[name]
            line = extra(k, v) if extra else unknown(k, v, [prefix + n for n in declared])
            if line:
                out.append(line)
    return out


def _names(schema: type) -> list[str]:
    return [key_name(f) for f in fields(schema)]


def is_schema(obj) -> bool:
    return isinstance(obj, type) and is_dataclass(obj)

