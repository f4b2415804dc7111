"""Strict, line-aware conversion between YAML files and trees of dataclasses.

A config is a tree of dataclasses whose fields carry ``metadata={"help": ...}``.
``load_yaml_config`` reads a YAML file, applies ``dotted.path=value`` command-line
overrides and builds the tree, failing with a :class:`ConfigError` that names the
dotted field path, where the bad value came from (file and line, or the override)
and what was expected.  ``dump_yaml`` writes a resolved config back out with each
field's help as a comment, so a run directory documents its own settings.

Supported annotations: ``int``, ``float``, ``bool``, ``str``, ``pathlib.Path``,
``X | None`` and other unions, ``Literal[...]``, ``list[T]``, ``tuple[T, ...]``,
``tuple[A, B]``, ``dict[K, V]``, nested dataclasses and ``typing.Any``.

Every ``float`` must be finite (NaN and +-inf are rejected wherever a float is
annotated). A field's valid range is declared in its metadata with any of ``ge``,
``gt``, ``le``, ``lt`` (``metadata={"help": ..., "ge": 1}``); it applies to the field's
number, or to each number of a ``list``/``tuple`` field, and ``None`` is exempt.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import reprlib
import types
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

#: dotted path (``model.hidden_size``, ``stages[1]``) -> (source, line or None)
Origins = dict[str, tuple[str, int | None]]

# PyYAML (YAML 1.1) resolves ``1e-3`` and ``3e-4`` to *strings* because its float
# pattern demands a dot; float fields therefore also accept numeric-looking strings.
_FLOAT_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_MERGE_TAG = "tag:yaml.org,2002:merge"
#: a config file larger than this is refused unread (configs are a few KiB; data lives in data files)
MAX_FILE_BYTES = 4 * 1024 * 1024
#: YAML nodes visited at most while reading one file: bounds alias bombs ("billion laughs")
MAX_NODES = 100_000
#: range keywords a field's metadata may carry, with the comparison each one demands
BOUNDS = {"ge": (">=", lambda x, b: x >= b), "gt": (">", lambda x, b: x > b),
          "le": ("<=", lambda x, b: x <= b), "lt": ("<", lambda x, b: x < b)}


class ConfigError(ValueError):
    """A config value is missing, unknown, ill-typed or rejected by validation.

    ``source`` is a file name or a description such as ``command line override
    'lr=abc'``; ``line`` is 1-based when known; ``path`` is the dotted field path.
    """

    def __init__(self, message: str, *, source: str | None = None,
                 line: int | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.source, self.line, self.path = source, line, path


@dataclasses.dataclass(frozen=True)
class _Ctx:
    """Where values came from, to turn a failing dotted path into a located message."""

    source: str
    origins: Mapping[str, tuple[str, int | None]]

    def locate(self, path: str) -> tuple[str, int | None]:
        """Origin of ``path`` or of its nearest recorded ancestor."""
        while path:
            if path in self.origins:
                return self.origins[path]
            path = path[: max(path.rfind("."), path.rfind("["), 0)]
        return self.origins.get("", (self.source, None))

    def error(self, path: str, message: str) -> ConfigError:
        source, line = self.locate(path)
        where = f"{source} line {line}" if line is not None else source
        return ConfigError(f"{where}: {path + ': ' if path else ''}{message}",
                           source=source, line=line, path=path)


def _join(prefix: str, key: object) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


_SHORT_REPR = reprlib.Repr()  # bounded: a value may share sub-lists through YAML aliases
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 3, 64, 64


def _describe(value: object) -> str:
    if value is None:
        return "None"
    text = _SHORT_REPR.repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def type_name(tp: Any) -> str:
    """Readable name of an annotation: ``int | None``, ``list[str]``, ``Literal['a', 'b']``."""
    if tp is Any:
        return "Any"
    if tp is type(None):
        return "None"
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', repr(origin))}[{inner}]" if args else origin.__name__
    return tp.__name__ if isinstance(tp, type) else repr(tp)


# ----------------------------------------------------------------------------- building


def _convert(tp: Any, value: Any, path: str, ctx: _Ctx) -> Any:
    """Check ``value`` against annotation ``tp`` and return it in its typed form."""
    if tp is Any or tp is object:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, path, ctx)
    if tp in (list, tuple, dict):  # bare containers hold anything
        tp = {list: list[Any], tuple: tuple[Any, ...], dict: dict[Any, Any]}[tp]
    origin, args = get_origin(tp), get_args(tp)
    def mismatch() -> str:  # built only on error: describing a large value costs time
        return f"expected {type_name(tp)}, got {_describe(value)}"

    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message is the most precise one
            return _convert(options[0], value, path, ctx)
        for option in options:
            try:
                return _convert(option, value, path, ctx)
            except ConfigError:
                pass
        raise ctx.error(path, mismatch())
    if origin is Literal:
        # compare types too, so that True does not pass for Literal[1]
        for allowed in args:
            if type(allowed) is type(value) and allowed == value:
                return allowed
        raise ctx.error(path, f"expected one of {', '.join(map(repr, args))}, got {_describe(value)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ctx.error(path, mismatch())
        return [_convert(args[0], v, f"{path}[{i}]", ctx) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ctx.error(path, mismatch())
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]", ctx) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ctx.error(path, f"expected {len(args)} items ({type_name(tp)}), got {len(value)}")
        return tuple(_convert(a, v, f"{path}[{i}]", ctx) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ctx.error(path, mismatch())
        key_tp, val_tp = args
        return {_convert(key_tp, k, _join(path, k), ctx): _convert(val_tp, v, _join(path, k), ctx)
                for k, v in value.items()}

    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if not isinstance(value, int) or abs(value) < 2**1023 else math.inf
        elif isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            number = float(value)  # '1e999' parses to inf, caught below
        if number is not None:
            if not math.isfinite(number):
                raise ctx.error(path, f"expected a finite float, got {_describe(value)}")
            return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (bool, int, float)):  # e.g. `name: on` or `revision: 2024`
            raise ctx.error(path, mismatch() + " (quote the value in YAML to make it a string)")
    if tp is Path and isinstance(value, (str, Path)):
        return Path(value)
    if tp is type(None) and value is None:
        return None
    if tp in (bool, int, float, str, Path, type(None)):
        raise ctx.error(path, mismatch())
    raise TypeError(f"{path or '<root>'}: unsupported annotation {tp!r} in a config dataclass")


def _number_text(bound: float) -> str:
    if isinstance(bound, int) and bound >= 2**20 and bound & (bound - 1) == 0:
        return f"2**{bound.bit_length() - 1}"
    return repr(bound)


def describe_range(metadata: Mapping[str, Any]) -> str:
    """The range a field's metadata declares, e.g. ``>= 1`` or ``> 0 and <= 1``; '' if none."""
    return " and ".join(f"{BOUNDS[key][0]} {_number_text(metadata[key])}"
                        for key in BOUNDS if metadata.get(key) is not None)


def _out_of_range(f: dataclasses.Field[Any], value: Any) -> tuple[int | None, Any] | None:
    """``(index or None, number)`` of the first number of ``value`` outside ``f``'s range."""
    bounds = [(key, f.metadata[key]) for key in BOUNDS if f.metadata.get(key) is not None]
    if not bounds:
        return None
    items = enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]
    for i, item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if not all(BOUNDS[key][1](item, bound) for key, bound in bounds):
            return i, item
    return None


def _check_range(f: dataclasses.Field[Any], value: Any, path: str, ctx: _Ctx) -> None:
    bad = _out_of_range(f, value)
    if bad is not None:
        i, item = bad
        raise ctx.error(path if i is None else f"{path}[{i}]", f"must be {describe_range(f.metadata)}, got {item!r}")


def check_ranges(obj: Any) -> None:
    """Raise ValueError if a field of dataclass instance ``obj`` is outside its declared range
    or is a non-finite float. Loading checks this with file and line already; a ``Params``
    dataclass calls it from ``__post_init__`` so that objects built in code
    (``dataclasses.replace``, tests) obey the same ranges."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        bad = _out_of_range(f, value)
        if bad is not None:
            where = f.name if bad[0] is None else f"{f.name}[{bad[0]}]"
            raise ValueError(f"{where} must be {describe_range(f.metadata)}, got {bad[1]!r}")


def _blamed_field(cls: type, message: str, path: str, ctx: _Ctx) -> str:
    """The field of ``cls`` that a ``__post_init__`` message names and that was set
    explicitly (file or override), so its error points at the line to change."""
    names = {f.name for f in dataclasses.fields(cls)}
    for token in re.findall(r"[A-Za-z_][\w.]*", message):
        head = token.split(".", 1)[0]
        if head not in names:
            continue
        full = _join(path, token.rstrip("."))
        if any(o == full or o.startswith((full + ".", full + "[")) for o in ctx.origins):
            return full
    return path


def _build(cls: type[T], value: Any, path: str, ctx: _Ctx) -> T:
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ctx.error(path, f"expected a mapping of {cls.__name__} fields, got {_describe(value)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, raw in value.items():
        sub = _join(path, key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ctx.error(sub, f"unknown field {key!r} in {cls.__name__}{hint} "
                                 f"(valid fields: {', '.join(fields)})")
        kwargs[key] = _convert(hints[key], raw, sub, ctx)
        _check_range(fields[key], kwargs[key], sub, ctx)
    missing = [name for name, f in fields.items() if name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ctx.error(path, f"missing required field(s) of {cls.__name__}: {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:  # __post_init__ validation
        raise ctx.error(_blamed_field(cls, str(exc), path, ctx), f"invalid {cls.__name__}: {exc}") from exc


def from_dict(cls: type[T], data: Mapping[str, Any], *, source: str = "<dict>",
              origins: Mapping[str, tuple[str, int | None]] | None = None) -> T:
    """Build dataclass ``cls`` from plain ``data``, strictly.

    Missing fields take their defaults; unknown keys, ill-typed values and
    ``ValueError`` from ``__post_init__`` raise :class:`ConfigError`.  ``source``
    names where ``data`` came from; ``origins`` optionally maps dotted paths to
    ``(source, line)`` for more precise messages (see :func:`read_yaml`).
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    try:
        return _build(cls, dict(data) if isinstance(data, Mapping) else data, "",
                      _Ctx(source, origins or {}))
    except RecursionError:  # e.g. an override value that refers to itself (`x=&a [*a]`)
        raise ConfigError(f"{source}: a value is nested too deeply or refers to itself",
                          source=source) from None


# ----------------------------------------------------------------------------- YAML input


def _record_lines(root: yaml.Node, lines: dict[str, int], source: str) -> None:
    """Fill ``lines`` with the 1-based line of every mapping key and sequence item.

    Refuses an alias that refers to a node containing it (a self-referencing document)
    and a document whose aliases expand to more than ``MAX_NODES`` nodes."""
    active: set[int] = set()  # ids of the nodes on the current path: an alias back to one is a cycle
    visited = 0

    def fail(node: yaml.Node, path: str, message: str) -> ConfigError:
        line = node.start_mark.line + 1
        return ConfigError(f"{source} line {line}: {path + ': ' if path else ''}{message}",
                           source=source, line=line, path=path or None)

    def walk(node: yaml.Node, path: str) -> None:
        nonlocal visited
        visited += 1
        if visited > MAX_NODES:
            raise fail(node, path, f"the document expands to more than {MAX_NODES} values through its "
                                   "aliases (*name); a config is a small tree, write it out")
        if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            return
        if id(node) in active:
            raise fail(node, path, "an alias (*name) refers to a node that contains it; "
                                   "a config cannot refer to itself")
        active.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:  # merged (<<) keys first: explicit keys win
                if key_node.tag == _MERGE_TAG:
                    merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                    for sub in merged:
                        walk(sub, path)
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key, line = str(key_node.value), key_node.start_mark.line + 1
                if key in seen:  # PyYAML silently keeps the last one, hiding typos
                    raise ConfigError(f"{source} line {line}: {_join(path, key)}: duplicate key "
                                      f"(first given at line {seen[key]})", source=source, line=line,
                                      path=_join(path, key))
                seen[key] = lines[_join(path, key)] = line
                walk(value_node, _join(path, key))
        else:
            for i, item in enumerate(node.value):
                lines[f"{path}[{i}]"] = item.start_mark.line + 1
                walk(item, f"{path}[{i}]")
        active.discard(id(node))

    walk(root, "")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def parse_yaml(text: str, *, source: str = "<string>") -> tuple[dict[str, Any], dict[str, int]]:
    """Parse YAML text whose top level is a mapping.

    Returns ``(data, lines)`` where ``lines`` maps dotted paths to 1-based line numbers.
    An empty document is an empty mapping. Self-referencing, alias-bomb and too deeply
    nested documents are refused with a :class:`ConfigError`, like malformed ones.
    """
    loader = yaml.SafeLoader(text)
    lines: dict[str, int] = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, lines
        if not isinstance(node, yaml.MappingNode):
            line = node.start_mark.line + 1
            raise ConfigError(f"{source} line {line}: the top level must be a mapping of field "
                              f"names to values, got a {node.id}", source=source, line=line)
        _record_lines(node, lines, source)
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        where = f"{source} line {line}" if line else source
        problem = _one_line(" ".join(p for p in (exc.context, exc.problem) if p))
        raise ConfigError(f"{where}: invalid YAML: {problem}", source=source, line=line) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {_one_line(str(exc))}", source=source) from exc
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply for a config", source=source) from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML config file (UTF-8 text of at most ``MAX_FILE_BYTES``); see :func:`parse_yaml`."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found", source=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {_one_line(str(exc))}", source=str(path)) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: config file is larger than {MAX_FILE_BYTES // 2**20} MiB; is it a "
                          "config? (data belongs in the task's data file)", source=str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} line {line}: not a UTF-8 text file (byte 0x{raw[exc.start]:02x} at offset "
                          f"{exc.start}); a config is YAML text", source=str(path), line=line) from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise ConfigError(f"{path} line {line}: a NUL byte: this is a binary file, not a YAML config",
                          source=str(path), line=line)
    return parse_yaml(text, source=str(path))


def _refers_to_itself(value: Any) -> bool:
    """Whether a parsed YAML value contains itself (``&a [*a]``); shared, acyclic parts
    (an alias used many times) are visited once."""
    active, done = set(), set()

    def visit(node: Any) -> bool:
        if not isinstance(node, (list, dict)) or id(node) in done:
            return False
        if id(node) in active:
            return True
        active.add(id(node))
        if any(visit(item) for item in (node.values() if isinstance(node, dict) else node)):
            return True
        active.discard(id(node))
        done.add(id(node))
        return False

    return visit(value)


def _apply_overrides(data: Mapping[str, Any], overrides: Iterable[str],
                     origins: Origins) -> dict[str, Any]:
    """:func:`apply_overrides` that also records each overridden path in ``origins``."""
    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of 'dotted.path=value' strings, not one string")
    result = copy.deepcopy(dict(data))
    for item in overrides:
        src = f"command line override {item!r}"
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"{src}: expected 'dotted.path=value', e.g. 'model.hidden_size=256'",
                              source=src)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{src}: value is not valid YAML: {_one_line(str(exc))}", source=src) from exc
        except RecursionError:
            raise ConfigError(f"{src}: value is nested too deeply", source=src) from None
        if _refers_to_itself(value):
            raise ConfigError(f"{src}: the value refers to itself through an alias (*name)", source=src)
        node, path = result, ""
        for part in parts[:-1]:
            path = _join(path, part)
            child = node.get(part)
            if child is None:
                child = node[part] = {}
                origins[path] = (src, None)
            elif not isinstance(child, dict):
                raise ConfigError(f"{src}: cannot set {key.strip()!r}: {path} holds "
                                  f"{_describe(child)}, not a mapping", source=src, path=path)
            node = child
        node[parts[-1]] = value
        full = ".".join(parts)
        # the file's line numbers for the replaced subtree no longer describe it
        for stale in [p for p in origins if p == full or p.startswith((full + ".", full + "["))]:
            del origins[stale]
        origins[full] = (src, None)
    return result


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a deep copy of ``data`` with ``dotted.path=value`` overrides applied.

    Values are parsed with ``yaml.safe_load`` (``x=3`` is an int, ``x=[1,2]`` a list,
    ``x=null`` None); missing intermediate mappings are created.
    """
    return _apply_overrides(data, overrides, {})


def load_yaml_config(cls: type[T], path: str | Path | None, overrides: Iterable[str] = (),
                     adjust: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> T:
    """Load ``cls`` from a YAML file (``None``: start from defaults), then apply overrides;
    ``adjust(tree, recipe)`` may then edit the raw tree in place before it is checked and
    built (``recipe``: the file's own tree, before the overrides)."""
    if path is None:
        data, source, origins = {}, "<defaults>", {}
    else:
        data, lines = read_yaml(path)
        source = str(path)
        origins = {p: (source, line) for p, line in lines.items()}
    recipe, data = data, _apply_overrides(data, overrides, origins)
    if adjust is not None:
        adjust(data, recipe)
    return from_dict(cls, data, source=source, origins=origins)


class ConfigSource(str):
    """Where a config came from, as errors name it: the recipe (the string itself) and the
    command-line overrides applied to it. ``of(field)`` names the override that set the field
    (or a field above or below it), else the recipe: an error about a value the user typed on
    the command line points at what they typed."""

    overrides: tuple[str, ...] = ()

    def __new__(cls, recipe: str, overrides: Iterable[str] = ()) -> "ConfigSource":
        source = super().__new__(cls, recipe)
        source.overrides = tuple(overrides)
        return source

    def of(self, *fields: str) -> str:
        for override in reversed(self.overrides):
            key = override.partition("=")[0].strip()
            if any(key == f or f.startswith(key + ".") or key.startswith(f + ".") for f in fields):
                return f"command line override {override!r}"
        return str(self)


def source_of(source: str, *fields: str) -> str:
    """``source.of(*fields)`` for a ``ConfigSource``; any other source as it is."""
    return source.of(*fields) if isinstance(source, ConfigSource) else source


# ----------------------------------------------------------------------------- output


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict/list/scalar form of a dataclass instance (``init=False`` fields omitted)."""
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        raise TypeError(f"to_dict needs a dataclass instance, got {type(obj).__name__}")
    return _plain(obj)


def _help_text(f: dataclasses.Field[Any]) -> str:
    """A field's help with its declared range appended, e.g. ``RL steps (>= 0)``."""
    text, valid = str(f.metadata.get("help", "")), describe_range(f.metadata)
    return f"{text} ({valid})" if valid else text


def _emit(obj: Any, indent: int, out: list[str]) -> None:
    pad = " " * indent
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and dataclasses.fields(value) and indent == 0:
            out.append("")  # blank line before each top-level section, for readability
        out.extend(f"{pad}# {line}".rstrip() for line in _help_text(f).splitlines())
        if dataclasses.is_dataclass(value) and dataclasses.fields(value):
            key = yaml.safe_dump({f.name: 0}).rsplit(": 0", 1)[0]  # quotes names like `on`
            out.append(f"{pad}{key}:")
            _emit(value, indent + 2, out)
            if indent == 0:
                out.append("")
        else:
            plain = _plain(value)
            # flow style (`[a, b]`) only for collections of scalars; a scalar value
            # must force block style or the one-key mapping itself turns into `{k: v}`
            flow = None if isinstance(plain, (list, dict)) else False
            text = yaml.safe_dump({f.name: plain}, sort_keys=False,
                                  default_flow_style=flow, allow_unicode=True)
            out.extend(pad + line for line in text.splitlines())


def dump_yaml(obj: Any, path: str | Path | None = None) -> str:
    """Render a dataclass tree as YAML with each field's help as a ``#`` comment above it.

    Writes the text to ``path`` when given and returns it; loading it back with
    :func:`from_dict` gives an equal object.
    """
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        raise TypeError(f"dump_yaml needs a dataclass instance, got {type(obj).__name__}")
    out = [f"# Resolved {type(obj).__name__} (written by rlvr.typed_yaml.dump_yaml)"]
    _emit(obj, 0, out)
    text = "\n".join(out) + "\n"
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


# ----------------------------------------------------------------------------- documentation


def _field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def field_help(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(dotted_path, type, default repr, help)`` for every leaf field of ``cls``.

    Fields annotated with a dataclass are expanded into their own fields, with the
    defaults the parent's default instance gives them; required fields show ``<required>``.
    """
    return list(_help_rows(cls, prefix, None))


def _help_rows(cls: type, prefix: str, defaults: Any) -> Iterator[tuple[str, str, str, str]]:
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        path, tp = _join(prefix, f.name), hints[f.name]
        default = getattr(defaults, f.name) if defaults is not None else _field_default(f)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            yield from _help_rows(tp, path, default if isinstance(default, tp) else None)
        else:
            shown = "<required>" if default is dataclasses.MISSING else repr(default)
            yield path, type_name(tp), shown, _help_text(f)


def _dataclasses_in(tp: Any) -> Iterator[type]:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        yield tp
    for arg in get_args(tp):
        yield from _dataclasses_in(arg)


def missing_help(cls: type, prefix: str = "", _active: frozenset[type] = frozenset()) -> list[str]:
    """Dotted paths of fields (at any depth, including inside ``Optional``/``list``) without help."""
    hints = get_type_hints(cls)
    missing: list[str] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        path = _join(prefix, f.name)
        if not str(f.metadata.get("help", "")).strip():
            missing.append(path)
        for sub in _dataclasses_in(hints[f.name]):
            if sub not in _active:  # recursive config types would otherwise never end
                missing.extend(missing_help(sub, path, _active | {cls}))
    return missing
