"""Generic config machinery: frozen dataclasses loaded strictly from YAML.

A config is a tree of ``@dataclasses.dataclass(frozen=True)`` classes. YAML files are read with :func:`load_yaml`
(which follows ``includes:``), command-line ``--set key=value`` overrides are applied with :func:`apply_overrides`,
and :func:`from_dict` turns the resulting plain data into dataclass instances, rejecting unknown keys, wrong types
and out-of-range values with a one-line :class:`~tf_xmr.errors.ConfigError` that names the dotted key, the file (or
``--set``) that set it, and what would have been valid.

Typical use::

    data, sources = load_yaml("configs/acmr.yaml")
    data = apply_overrides(data, ["train.epochs=5"], sources)
    config = from_dict(ExperimentConfig, data, sources=sources)
    dump_yaml(config, os.path.join(run_dir, "config.yaml"))

Supported field annotations: ``bool``, ``int``, ``float``, ``str``, ``X | None`` (and other unions),
``typing.Literal[...]``, ``tuple[X, ...]`` / ``tuple[X, Y]``, ``dict[str, X]``, nested dataclasses and
``typing.Any``.

YAML dialect: files and override values are read with a safe loader that resolves plain scalars the YAML 1.2 way.
Only ``true``/``false`` are booleans (``yes``/``on`` stay strings), ``1e-3`` is a float (PyYAML's YAML 1.1 rules
read it as a string, a classic learning-rate trap), ``12:30`` and ``2020-01-01`` stay strings, and duplicate keys
are an error rather than silently keeping the last one.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import numbers
import os
import re
import types
import typing
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import yaml

from tf_xmr.errors import ConfigError

__all__ = [
    "INCLUDES_KEY",
    "SET_SOURCE",
    "FieldSpec",
    "SourceMap",
    "apply_overrides",
    "cfg_field",
    "dump_yaml",
    "field_spec",
    "from_dict",
    "load_yaml",
    "replace_path",
    "to_dict",
]

#: Label recorded in a :class:`SourceMap` for values set on the command line.
SET_SOURCE = "--set"
#: Top-level key of a YAML file listing the files it builds on; never part of the config itself.
INCLUDES_KEY = "includes"
_META_KEY = "tf_xmr.config"


# --------------------------------------------------------------------------------------------------------------------
# Fields
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """Validation metadata of one config field, attached by :func:`cfg_field`.

    Attributes:
        ge: Inclusive lower bound for numbers (and each number in a tuple or dict), or None.
        gt: Exclusive lower bound, or None.
        le: Inclusive upper bound, or None.
        lt: Exclusive upper bound, or None.
        doc: Human-readable description (paper symbol and equation, for paper hyperparameters).
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    doc: str = ""

    def describe(self) -> str:
        """Returns the bounds as text, e.g. ``">= 0 and < 1"``; empty when unbounded."""
        parts = [f"{op} {_show(bound)}" for op, bound in
                 ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)) if bound is not None]
        return " and ".join(parts)

    def admits(self, value: float) -> bool:
        """Returns whether ``value`` lies within the bounds (NaN never does when any bound is set)."""
        # Written as `not (value >= ge)` rather than `value < ge` so that NaN fails every bound.
        if self.ge is not None and not value >= self.ge:
            return False
        if self.gt is not None and not value > self.gt:
            return False
        if self.le is not None and not value <= self.le:
            return False
        if self.lt is not None and not value < self.lt:
            return False
        return True


_NO_SPEC = FieldSpec()


def cfg_field(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    doc: str = "",
) -> Any:
    """Declares a config field with optional range bounds and a description.

    Bounds apply to int/float values and to each number inside a tuple or dict value; ``None`` (for optional
    fields) is never range-checked. A field without ``default`` or ``default_factory`` is required.

    Args:
        default: Default value (immutable: numbers, strings, tuples, None).
        default_factory: Zero-argument callable producing the default, for dicts and nested dataclasses.
        ge: Value must be >= ge.
        gt: Value must be > gt.
        le: Value must be <= le.
        lt: Value must be < lt.
        doc: Description; for paper hyperparameters cite the symbol and equation.

    Returns:
        A ``dataclasses.field`` carrying a :class:`FieldSpec` in its metadata.

    Raises:
        TypeError: If both ``default`` and ``default_factory`` are given.
        ValueError: If a numeric default violates the bounds (a schema bug, caught at import time).
    """
    if default is not dataclasses.MISSING and default_factory is not dataclasses.MISSING:
        raise TypeError("cfg_field: give either default or default_factory, not both")
    spec = FieldSpec(ge=ge, gt=gt, le=le, lt=lt, doc=doc)
    if default is not dataclasses.MISSING:
        for number in _numbers_in(default):
            if not spec.admits(number):
                raise ValueError(f"cfg_field: default {default!r} violates the bounds {spec.describe()}")
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_META_KEY: spec})


def field_spec(field: dataclasses.Field) -> FieldSpec:
    """Returns the :class:`FieldSpec` of a dataclass field (an unbounded, undocumented one for plain fields)."""
    return field.metadata.get(_META_KEY, _NO_SPEC)


def _numbers_in(value: Any) -> list[float]:
    """The numbers a range check applies to: the value itself, or the elements of a tuple/list/dict."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for item in value for v in _numbers_in(item)]
    if isinstance(value, Mapping):
        return [v for item in value.values() for v in _numbers_in(item)]
    return []


# --------------------------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------------------------


class SourceMap:
    """Records which file (or ``--set``) set each dotted config key last.

    Keys are dotted paths (``"train.epochs"``); sections are recorded too, so a key that was never set itself
    (a missing or list-element key) is attributed to its nearest recorded ancestor, and failing that to ``root``,
    the top-level file.

    Attributes:
        root: The top-level config file, or None when the data did not come from a file.
    """

    def __init__(self, root: str | None = None, entries: Mapping[str, str] | None = None):
        self.root = root
        self._entries: dict[str, str] = dict(entries or {})

    def set(self, key: str, source: str) -> None:
        """Records that ``key`` was set by ``source`` (a file path or ``"--set"``)."""
        self._entries[key] = source

    def get(self, key: str) -> str | None:
        """Returns the source recorded for exactly ``key``, or None."""
        return self._entries.get(key)

    def record(self, value: Any, source: str, key: str = "") -> None:
        """Records ``source`` for ``key`` and, if ``value`` is a mapping, for every key below it."""
        if key:
            self._entries[key] = source
        if isinstance(value, Mapping):
            for name, child in value.items():
                self.record(child, source, _join(key, name))

    def drop(self, key: str) -> None:
        """Forgets ``key`` and every key below it (its value is being replaced as a whole)."""
        for name in [name for name in self._entries if _is_under(name, key)]:
            del self._entries[name]

    def copy_from(self, other: SourceMap, key: str) -> None:
        """Copies ``other``'s records for ``key`` and every key below it."""
        for name, source in other._entries.items():
            if _is_under(name, key):
                self._entries[name] = source

    def lookup(self, key: str) -> str | None:
        """Returns the source of ``key``, of its nearest recorded ancestor, or ``root``."""
        while key:
            if key in self._entries:
                return self._entries[key]
            key = _parent(key)
        return self.root

    def where(self, key: str) -> str:
        """Returns ``" in <file>"``, ``" from --set"`` or ``""``, ready to follow a key in an error message."""
        source = self.lookup(key)
        if source is None:
            return ""
        # Non-file labels such as "--set" read as "from --set"; files read as "in configs/x.yaml".
        return f" from {source}" if source.startswith("--") else f" in {source}"

    def copy(self) -> SourceMap:
        """Returns an independent copy."""
        return SourceMap(self.root, self._entries)

    def items(self) -> Iterator[tuple[str, str]]:
        """Iterates over ``(dotted key, source)`` pairs."""
        return iter(self._entries.items())

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        # A map with no entries still carries `root`; `sources or SourceMap()` must not discard it.
        return True

    def __repr__(self) -> str:
        return f"SourceMap(root={self.root!r}, entries={self._entries!r})"


def _join(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _is_under(name: str, key: str) -> bool:
    return name == key or name.startswith(key + ".") or name.startswith(key + "[")


def _parent(key: str) -> str:
    """``"a.b[2]"`` -> ``"a.b"`` -> ``"a"`` -> ``""``."""
    if key.endswith("]") and "[" in key:
        return key[: key.rindex("[")]
    return key.rpartition(".")[0]


# --------------------------------------------------------------------------------------------------------------------
# YAML dialect
# --------------------------------------------------------------------------------------------------------------------

# YAML 1.2 core-schema scalars. PyYAML implements YAML 1.1, where `yes`/`on` are booleans, `1e-3` is a string,
# `12:30` is the integer 750, `010` is octal and `2020-01-01` is a date; each of those has bitten config users.
_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT_RE = re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+)$")
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_REPLACED_TAGS = {
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
    # `=` alone resolves to the "value" tag, which the safe constructor cannot build: keep it a string.
    "tag:yaml.org,2002:value",
}


class _Loader(yaml.SafeLoader):
    """Safe loader with YAML 1.2 scalar resolution and duplicate-key detection."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL_RE, list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_RE, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict:
    seen = set()
    for key_node, _ in node.value:
        # Merge keys (`<<: *base`) legitimately repeat keys they bring in; only explicit keys must be unique.
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key: let construct_mapping report it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


class _Dumper(yaml.SafeDumper):
    """Safe dumper that also quotes strings our loader would read as numbers (e.g. ``"1e-3"``).

    Keeping the YAML 1.1 resolvers as well means strings such as ``"yes"`` stay quoted, so the file reads the same
    under any YAML parser.
    """


_Dumper.add_implicit_resolver("tag:yaml.org,2002:int", _INT_RE, list("-+0123456789"))
_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One-line description of a YAML error with 1-based line and column."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or getattr(error, "context", None) or str(error)
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


# --------------------------------------------------------------------------------------------------------------------
# Loading files and overrides
# --------------------------------------------------------------------------------------------------------------------


def load_yaml(path: str | os.PathLike) -> tuple[dict, SourceMap]:
    """Reads a YAML config file, following its ``includes:``.

    ``includes`` is a top-level list of paths, resolved relative to the including file; included files may include
    others. Included files are merged in order, then the file's own keys on top: mappings are merged key by key,
    anything else (lists, scalars) is replaced whole. The ``includes`` key is removed from the result.

    Args:
        path: The top-level config file.

    Returns:
        ``(data, sources)``: the merged plain data, and the file that set each dotted key last
        (``sources.root`` is ``path``).

    Raises:
        ConfigError: A missing file (top-level or included), an include cycle, invalid YAML (with the line number),
            a top level that is not a mapping, or a malformed ``includes`` entry; the message names the file.
    """
    path = os.fspath(path)
    data, sources = _load_file(path, ())
    sources.root = path
    return data, sources


def _load_file(path: str, stack: tuple[tuple[str, str], ...]) -> tuple[dict, SourceMap]:
    """Loads one file and its includes; ``stack`` holds ``(realpath, shown path)`` of the including files."""
    real = os.path.realpath(path)
    chain = [shown for _, shown in stack]
    if real in (r for r, _ in stack):
        start = [r for r, _ in stack].index(real)
        raise ConfigError(f"include cycle in config files: {' -> '.join(chain[start:] + [path])}")
    included_from = f" (included from '{chain[-1]}')" if chain else ""
    if not os.path.exists(path):
        raise ConfigError(f"config file '{path}'{included_from} does not exist")
    if os.path.isdir(path):
        raise ConfigError(f"config file '{path}'{included_from} is a directory, not a YAML file")
    try:
        with open(path, encoding="utf-8") as f:
            raw = _parse_yaml(f.read())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {_yaml_problem(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file '{path}': {e}") from None
    if raw is None:  # an empty file (or only comments) is an empty config
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must contain a mapping of keys at the top level, got {_show(raw)}")

    includes = raw.pop(INCLUDES_KEY, None)
    if includes is None:
        includes = []
    if not isinstance(includes, list) or not all(isinstance(p, str) and p for p in includes):
        raise ConfigError(f"'{INCLUDES_KEY}' in config file '{path}' must be a list of file paths, "
                          f"got {_show(includes)}")

    data: dict = {}
    sources = SourceMap()
    for include in includes:
        include_path = os.path.expanduser(include)
        if not os.path.isabs(include_path):
            include_path = os.path.normpath(os.path.join(os.path.dirname(path), include_path))
        included, included_sources = _load_file(include_path, stack + ((real, path),))
        _overlay(data, sources, included, included_sources, "")
    own_sources = SourceMap()
    own_sources.record(raw, path)
    _overlay(data, sources, raw, own_sources, "")
    return data, sources


def _overlay(dst: dict, dst_sources: SourceMap, src: Mapping, src_sources: SourceMap, prefix: str) -> None:
    """Deep-merges ``src`` into ``dst`` (mappings merge, everything else replaces), carrying provenance along."""
    for name, value in src.items():
        key = _join(prefix, name)
        if isinstance(value, Mapping) and isinstance(dst.get(name), dict):
            if src_sources.get(key) is not None:
                dst_sources.set(key, src_sources.get(key))
            _overlay(dst[name], dst_sources, value, src_sources, key)
        else:
            dst_sources.drop(key)
            dst[name] = copy.deepcopy(value)
            dst_sources.copy_from(src_sources, key)


def apply_overrides(data: Mapping, overrides: Sequence[str], sources: SourceMap) -> dict:
    """Applies ``dotted.key=value`` overrides (later ones win) to a copy of ``data``.

    Values are parsed as YAML (``5`` -> int, ``[1, 2]`` -> list, ``/tmp/x`` -> str, ``null`` -> None). Missing
    intermediate sections are created; whether the key exists at all is checked later by :func:`from_dict`,
    whose errors then say "from --set".

    Args:
        data: Plain config data, e.g. from :func:`load_yaml`; not modified.
        overrides: Strings of the form ``key=value``.
        sources: Provenance map; updated in place so the overridden keys are attributed to ``--set``.

    Returns:
        A new dict with the overrides applied.

    Raises:
        ConfigError: An override without ``=``, with an empty key or key part, with an invalid YAML value, or one
            that sets a key below a value that is not a mapping.
    """
    result = copy.deepcopy(dict(data))
    for override in overrides:
        key, sep, text = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{override}' must have the form key=value (e.g. train.epochs=5)")
        parts = key.split(".")
        if not all(part.strip() == part and part for part in parts):
            raise ConfigError(f"override '{override}' has an invalid key '{key}': use dotted names like train.epochs")
        try:
            value = _parse_yaml(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{override}' has a value that is not valid YAML: {_yaml_problem(e)}") \
                from None
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                # Absent, or an empty section written as `part:` in YAML: setting a key below it makes it a section.
                child = node[part] = {}
                sources.set(".".join(parts[: depth + 1]), SET_SOURCE)
            elif not isinstance(child, dict):
                raise ConfigError(f"override '{override}' sets a key below '{'.'.join(parts[: depth + 1])}', "
                                  f"which is {_show(child)}, not a section")
            node = child
        node[parts[-1]] = value
        sources.drop(key)
        sources.record(value, SET_SOURCE, key)
    return result


# --------------------------------------------------------------------------------------------------------------------
# Strict conversion
# --------------------------------------------------------------------------------------------------------------------


class _Mismatch(ConfigError):
    """The value has the wrong kind for its key (as opposed to a problem further down); unions try the next type."""


def from_dict(cls: type, data: Mapping, *, sources: SourceMap | None = None, prefix: str = "") -> Any:
    """Builds a config dataclass from plain data, strictly.

    Every key must be a field (init fields only), every value must have the declared type and lie in the declared
    range. Missing keys take the field default; a missing nested section becomes its default instance; a missing
    required field is an error. ``ValueError`` raised by a dataclass's ``__post_init__`` becomes a ``ConfigError``
    naming the section.

    Args:
        cls: A dataclass type (normally frozen).
        data: The section's plain data (mappings, lists, scalars), e.g. from :func:`load_yaml`.
        sources: Provenance used to name the file in errors; None when the data came from code.
        prefix: Dotted path of ``data`` within the whole config, used in error messages (e.g. ``"method"``).

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: One line naming the dotted key, its file (or ``--set``) and the valid keys/choices/range.
        TypeError: If ``cls`` is not a dataclass or uses an unsupported annotation (a schema bug).
    """
    if not _is_dataclass_type(cls):
        raise TypeError(f"from_dict expects a dataclass type, got {cls!r}")
    return _build(cls, data, prefix, sources if sources is not None else SourceMap())


def _build(cls: type, data: Any, key: str, sources: SourceMap) -> Any:
    if not isinstance(data, Mapping):
        raise _Mismatch(f"config {_name(key)}{sources.where(key)} must be a mapping of keys "
                        f"({', '.join(sorted(_init_fields(cls)))}), got {_show(data)}")
    fields = _init_fields(cls)
    hints = _type_hints(cls)
    for name in data:
        if not isinstance(name, str) or name not in fields:
            _unknown_key(name, key, fields, sources)
    kwargs = {}
    for name, field in fields.items():
        field_key = _join(key, name)
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], field_key, sources, field_spec(field), hints[name])
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            if _is_dataclass_type(hints[name]):
                # A required nested section that is absent entirely: its own defaults may make it complete.
                kwargs[name] = _build(hints[name], {}, field_key, sources)
            else:
                raise ConfigError(f"config key '{field_key}' ({_describe(hints[name], field_spec(field))}) is "
                                  f"required but not set{_where_missing(field_key, sources)}")
    try:
        return cls(**kwargs)
    except ValueError as e:
        # Cross-field checks in __post_init__ raise ValueError; report them against the section and its file.
        raise ConfigError(f"config {_name(key)}{sources.where(key)} is invalid: {e}") from None


def _name(key: str) -> str:
    return f"section '{key}'" if key else "(top level)"


def _where_missing(key: str, sources: SourceMap) -> str:
    source = sources.lookup(key)
    if source is None:
        return ""
    if source.startswith("--"):
        return f" (section from {source})"
    return f" in {sources.root} or its includes" if sources.root else f" in {source}"


def _unknown_key(name: Any, section: str, fields: Mapping[str, dataclasses.Field], sources: SourceMap) -> None:
    key = _join(section, name)
    suggestion = _suggest(str(name), fields)
    hint = f"; did you mean '{suggestion}'?" if suggestion else ";"
    under = f"under '{section}'" if section else "at the top level"
    valid = ", ".join(sorted(fields)) or "(none)"
    raise ConfigError(f"config key '{key}'{sources.where(key)} is not a valid key{hint} valid keys {under}: {valid}")


def _suggest(word: str, options: typing.Iterable[str]) -> str | None:
    """Closest option to ``word``, compared case-insensitively, or None."""
    by_lower = {str(option).lower(): str(option) for option in options}
    matches = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[matches[0]] if matches else None


def _convert(value: Any, tp: Any, key: str, sources: SourceMap, spec: FieldSpec, declared: Any) -> Any:
    """Converts ``value`` to annotation ``tp``; ``declared`` is the whole annotation at ``key``, for messages."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        deep_errors = []
        for member in args:
            if member is type(None):
                continue
            if _is_dataclass_type(member) and isinstance(value, Mapping):
                # The section's own errors (a typo in a nested key) name that key; a union-level "must be a mapping"
                # would hide it.
                return _convert(value, member, key, sources, spec, declared)
            try:
                return _convert(value, member, key, sources, spec, declared)
            except _Mismatch:
                continue
            except ConfigError as e:  # right kind, wrong content (e.g. out of range): the more useful message
                deep_errors.append(e)
        if deep_errors:
            raise deep_errors[0]
        raise _mismatch(value, key, sources, spec, declared)

    if origin is typing.Literal:
        for choice in args:
            # type() too, so that true does not pass as 1 and 1 does not pass as 1.0.
            if value == choice and type(value) is type(choice):
                return value
        raise _mismatch(value, key, sources, spec, declared)

    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _mismatch(value, key, sources, spec, declared)
        return _build(tp, value, key, sources)

    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise _mismatch(value, key, sources, spec, declared)
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item_types = [args[0] if args else Any] * len(value)
        elif args == ((),):  # tuple[()] - the empty tuple
            item_types = []
        else:
            item_types = list(args)
        if len(item_types) != len(value):
            raise ConfigError(f"config key '{key}'{sources.where(key)} must be {_describe(declared, spec)}, "
                              f"got a list of {len(value)} items")
        return tuple(_convert(item, item_tp, f"{key}[{i}]", sources, spec, item_tp)
                     for i, (item, item_tp) in enumerate(zip(value, item_types, strict=True)))

    if origin is dict or tp is dict:
        key_tp, value_tp = args if args else (str, Any)
        if key_tp is not str:
            raise TypeError(f"config field '{key}': only dict[str, X] is supported, got {tp!r}")
        if not isinstance(value, Mapping):
            raise _mismatch(value, key, sources, spec, declared)
        result = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise ConfigError(f"config key '{key}'{sources.where(key)} must have string keys, "
                                  f"got key {_show(name)}")
            item_key = _join(key, name)
            result[name] = _convert(item, value_tp, item_key, sources, spec, value_tp)
        return result

    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _mismatch(value, key, sources, spec, declared)
    if tp is int:
        # bool is an int subclass in Python, but `epochs: true` is a mistake, not 1.
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return _check_range(int(value), key, sources, spec, tp)
        raise _mismatch(value, key, sources, spec, declared)
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return _check_range(float(value), key, sources, spec, tp)
        raise _mismatch(value, key, sources, spec, declared)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _mismatch(value, key, sources, spec, declared)
    if tp is type(None):
        if value is None:
            return None
        raise _mismatch(value, key, sources, spec, declared)
    raise TypeError(f"config field '{key}' has an unsupported annotation {tp!r}")


# Every count, size and seed ends up in a TensorFlow int64 (or a NumPy uint32 seed, bounded in the schema), and no
# config number is meaningful as inf or NaN: both are refused here, at load time, before anything is written.
_INT64_MAX = 2**63 - 1


def _check_range(value: float, key: str, sources: SourceMap, spec: FieldSpec, tp: type) -> float:
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"config key '{key}'{sources.where(key)} must be a finite number, got {_show(value)}")
    if tp is int and abs(value) > _INT64_MAX:
        raise ConfigError(f"config key '{key}'{sources.where(key)} must fit in a 64-bit integer "
                          f"(|value| <= 2**63 - 1), got {value}")
    if spec.admits(value):
        return value
    raise ConfigError(f"config key '{key}'{sources.where(key)} must be {_describe(tp, spec)}, got {_show(value)}")


def _mismatch(value: Any, key: str, sources: SourceMap, spec: FieldSpec, declared: Any) -> _Mismatch:
    return _Mismatch(f"config key '{key}'{sources.where(key)} must be {_describe(declared, spec)}, "
                     f"got {_show(value)}")


def _describe(tp: Any, spec: FieldSpec = _NO_SPEC) -> str:
    """Phrase for an annotation, e.g. ``"an int >= 1 or null"`` or ``"one of 'cosine', 'euclidean'"``."""
    bounds = spec.describe()
    if tp is Any:
        return "any value"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        members = [_describe(a, spec) for a in args if a is not type(None)]
        if type(None) in args:
            members.append("null")
        return " or ".join(members)
    if origin is typing.Literal:
        return "one of " + ", ".join(_show(choice) for choice in args)
    if _is_dataclass_type(tp):
        return "a mapping"
    if origin is tuple or tp is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return f"a list (each {_describe(args[0], spec)})" if args and args[0] is not Any else "a list"
        return f"a list of {len(args)} items ({', '.join(_describe(a, spec) for a in args)})"
    if origin is dict or tp is dict:
        value_tp = args[1] if args else Any
        return f"a mapping (each value {_describe(value_tp, spec)})" if value_tp is not Any else "a mapping"
    simple = {bool: "a bool (true or false)", int: "an int", float: "a float", str: "a string",
              type(None): "null"}
    if tp in simple:
        text = simple[tp]
        if tp in (int, float) and bounds:
            text += f" {bounds}"
        return text
    return repr(tp)


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML, shortened to keep messages on one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return f"a list ({len(value)} items)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    # get_type_hints evaluates string annotations, so schemas may use `from __future__ import annotations`.
    return typing.get_type_hints(cls)


def _init_fields(cls: type) -> dict[str, dataclasses.Field]:
    # init=False fields are derived, not configured: they are neither accepted nor written out.
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


# --------------------------------------------------------------------------------------------------------------------
# Writing and editing
# --------------------------------------------------------------------------------------------------------------------


def to_dict(instance: Any) -> dict:
    """Converts a config dataclass (or a mapping) to plain YAML-safe data.

    Nested dataclasses become dicts (init fields, in declaration order), tuples become lists, numpy scalars and
    arrays become Python numbers and lists, so ``from_dict(type(c), to_dict(c)) == c``.

    Args:
        instance: A dataclass instance or a mapping.

    Returns:
        A new dict of dicts, lists, str, int, float, bool and None.

    Raises:
        TypeError: If a value (typically in an ``Any`` field) has no YAML-safe form.
    """
    if not (dataclasses.is_dataclass(instance) and not isinstance(instance, type)) and not isinstance(
            instance, Mapping):
        raise TypeError(f"to_dict expects a dataclass instance or a mapping, got {type(instance).__name__}")
    return _plain(instance, "")


def _plain(value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), _join(key, f.name))
                for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): _plain(v, _join(key, k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        # Subclasses (IntEnum, numpy.float64, str enums) are narrowed to the base type yaml.safe_dump knows.
        for base in (bool, int, float, str):
            if isinstance(value, base):
                return base(value)
        return value
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalars and arrays
        return _plain(value.tolist(), key)
    raise TypeError(f"to_dict: value at '{key}' of type {type(value).__name__} cannot be written to YAML")


def dump_yaml(instance_or_dict: Any, path: str | os.PathLike) -> None:
    """Writes a config (dataclass or mapping) to a YAML file atomically.

    The text goes to a temporary file in the same directory, which then replaces ``path`` in one ``os.replace``,
    so readers never see a half-written file and a failure leaves nothing behind. Keys keep declaration order.

    Args:
        instance_or_dict: A config dataclass instance or a plain mapping.
        path: Destination file; its directory is created if needed.
    """
    path = os.fspath(path)
    text = yaml.dump(to_dict(instance_or_dict), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # A unique name opened with "x" (rather than mkstemp) keeps the normal umask permissions on the final file.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def replace_path(instance: Any, path: str, value: Any) -> Any:
    """Returns a copy of a frozen config with the value at a dotted path replaced.

    The new value is converted and checked exactly as :func:`from_dict` would (type, choices, range), and every
    dataclass on the path is rebuilt so its ``__post_init__`` checks run again.

    Args:
        instance: A config dataclass instance.
        path: Dotted path, e.g. ``"train.optimizer.learning_rate"``; may go through ``dict[str, X]`` fields.
        value: The new value (plain data, or a dataclass instance for a section).

    Returns:
        A new instance; ``instance`` is unchanged.

    Raises:
        ConfigError: An unknown key on the path, a path through a non-section value, or an invalid value.
    """
    if not (dataclasses.is_dataclass(instance) and not isinstance(instance, type)):
        raise TypeError(f"replace_path expects a dataclass instance, got {type(instance).__name__}")
    parts = path.split(".")
    if not all(parts):
        raise ConfigError(f"config path '{path}' is not a valid dotted key")
    return _replace(instance, type(instance), parts, value, "", SourceMap())


def _replace(node: Any, tp: Any, parts: list[str], value: Any, key: str, sources: SourceMap) -> Any:
    name, rest = parts[0], parts[1:]
    here = _join(key, name)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        fields = _init_fields(type(node))
        if name not in fields:
            _unknown_key(name, key, fields, sources)
        field_tp = _type_hints(type(node))[name]
        if rest:
            new = _replace(getattr(node, name), field_tp, rest, value, here, sources)
        else:
            new = _convert(value, field_tp, here, sources, field_spec(fields[name]), field_tp)
        try:
            return dataclasses.replace(node, **{name: new})
        except ValueError as e:
            raise ConfigError(f"config {_name(key)} is invalid: {e}") from None
    if isinstance(node, Mapping):
        # Strip Optional[...] around the dict annotation to find its value type.
        args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (
            typing.Union, types.UnionType) else [tp]
        dict_args = typing.get_args(args[0]) if len(args) == 1 else ()
        value_tp = dict_args[1] if len(dict_args) == 2 else Any
        if rest:
            if name not in node:
                raise ConfigError(f"config key '{here}' does not exist; existing keys under '{key}': "
                                  f"{', '.join(sorted(map(str, node))) or '(none)'}")
            new = _replace(node[name], value_tp, rest, value, here, sources)
        else:
            new = _convert(value, value_tp, here, sources, _NO_SPEC, value_tp)
        return {**node, name: new}
    raise ConfigError(f"config key '{key}' is {_show(node)}, not a section, so '{here}' cannot be set")
