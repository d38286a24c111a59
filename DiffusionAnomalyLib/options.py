"""Options declared once, on the fields of a dataclass: each field's annotation is its type and its
:class:`Option` (in the field's metadata, :func:`setting`) its range or choices, label, help and the commands that
take it. Everything a front end needs is derived here: the check of one value (:func:`field_problem`), the JSON
types a file may use (:func:`check_values`), the command-line parsing (:func:`parse_text`, :func:`add_arguments`).
``settings.RunSettings`` (a detection run), ``evaluation.commands.CalibrationGrid`` (the sweep's grid) and the
training plans declare their options this way.

Types: ``bool``, ``int``, ``float``, ``str``, optional (``X | None``), and lists (``tuple[X, ...]``: several values
on the command line, each checked). Stdlib only.
"""

from __future__ import annotations

import argparse
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from DiffusionAnomalyLib.errors import InputError

#: The largest seed (numpy's and torch's generators take 0..2^63-1).
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Option:
    """How an option is checked and offered, written once beside its field (the field's annotation is its type).

    Range: ``low``..``high`` (inclusive; ``low_open``/``high_open``: that end excluded; ``high`` may be a function,
    for limits set by the environment), or ``choices``. ``label`` names it in messages. ``words``: texts the command
    line accepts besides a value, passed on as they are (``threshold``: ``otsu``, ``bundle``).
    Command line: ``--<field-name>`` on ``commands``. Slicer panel: the parameter-node member ``panel`` (bound to a
    widget by ``SlicerParameterName`` in the ``.ui``), limited to ``panel_range`` (default: ``low``..``high``) or
    ``panel_choices`` (default: the choices, with ``bundle_value`` first when it is a word); ``bundle_value`` is the
    member value that means "the bundle's recommendation" (None: the panel always sends its value).
    ``recommend``: a bundle's ``recommended`` block may set it. ``maps``: it changes the anomaly maps, so it is part
    of the map cache's key (``key`` is its short name there; ``key_default``: left out of the key at that value).
    ``negative``: (flag, help) of the flag that sets a ``bool | None`` field False (``--<field-name>`` sets it True;
    neither: None, "not said").
    """

    help: str
    commands: tuple[str, ...] = ("run",)
    metavar: str | None = None
    label: str = ""
    low: float | None = None
    high: float | typing.Callable[[], float] | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    words: tuple[str, ...] = ()
    panel: str | None = None
    panel_range: tuple[float, float] | None = None
    panel_choices: tuple[str, ...] | None = None
    bundle_value: Any = None
    recommend: bool = False
    maps: bool = False
    key: str = ""
    key_default: Any = None
    negative: tuple[str, str] | None = None

    def upper(self) -> float | None:
        return self.high() if callable(self.high) else self.high

    def panel_limit(self) -> tuple[str, tuple]:
        """The panel member's limit: ``("choice", values)`` or ``("range", (low, high))``."""
        if self.panel_choices or self.choices:
            first = (self.bundle_value,) if isinstance(self.bundle_value, str) else ()
            return "choice", (*first, *(self.panel_choices or self.choices))
        return "range", self.panel_range or (self.low, self.upper())


def setting(default: Any, option: Option, kw_only: bool | None = None) -> Any:
    """A declared field: its default and its :class:`Option` (``kw_only``: a keyword-only field, e.g. one a
    subclass redeclares)."""
    extra = {} if kw_only is None else {"kw_only": kw_only}
    return field(default=default, metadata={"option": option}, **extra)


def required(option: Option) -> Any:
    """A declared field without a default (the command line requires it)."""
    return field(metadata={"option": option})


def redeclared(cls: type, name: str, default: Any, kw_only: bool | None = None, **changes: Any) -> Any:
    """``cls``' field ``name`` with another default and the same :class:`Option` (one declaration; e.g. ``train
    all`` calibrates with other grid defaults than ``sweep``, the denoiser trains longer than the classifier);
    ``changes``: Option attributes that differ there (e.g. the ``commands`` and ``help`` of a run setting that
    ``train all`` takes for its calibration); ``default`` ``dataclasses.MISSING``: a required field."""
    import dataclasses

    base = cls.__dataclass_fields__[name]
    option = dataclasses.replace(base.metadata["option"], **changes)
    if default is dataclasses.MISSING:
        return field(metadata={"option": option})
    return setting(default, option, kw_only=kw_only if kw_only is not None else (base.kw_only is True or None))


def options(cls: type) -> list[tuple[str, Option]]:
    """The declared fields of ``cls`` with how each is offered, in field order: ``(field name, Option)``."""
    return [(f.name, f.metadata["option"]) for f in fields(cls) if "option" in f.metadata]


def field_type(name: str, cls: type) -> tuple[type, bool]:
    """A field's value type (bool, int, float or str; of each element for a list) and whether it may be None."""
    kind, nullable, _ = field_shape(name, cls)
    return kind, nullable


def field_shape(name: str, cls: type) -> tuple[type, bool, bool]:
    """A field's value type, whether it may be None, and whether it is a list (``tuple[X, ...]``)."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    nullable = type(None) in typing.get_args(hint)
    base = args[0] if nullable and args else hint
    if typing.get_origin(base) is tuple:
        return typing.get_args(base)[0], nullable, True
    return base, nullable, False


def _range_text(opt: Option, kind: type) -> str:
    low, high = opt.low, opt.upper()
    if kind is int:
        top = "2^63-1" if high == MAX_SEED else high
        return f"in {low:g}..{top}" if high is not None else f">= {low:g}"
    if high is not None:
        return f"in {'(' if opt.low_open else '['}{low:g}, {high:g}{')' if opt.high_open else ']'}"
    return f"a finite number {'>' if opt.low_open else '>='} {low:g}"


def field_problem(name: str, value: Any, cls: type) -> str | None:
    """What is wrong with ``value`` for the field ``name`` (None when it is fine), from its declaration; a list is
    checked value by value."""
    opt = dict(options(cls))[name]
    kind, nullable, many = field_shape(name, cls)
    label = opt.label or name
    if value is None:
        return None if nullable else f"{label} must be given"
    for item in (value if many else (value,)):
        if opt.choices is not None and item not in opt.choices:
            return f"unknown {label} {item!r}; choose one of {', '.join(opt.choices)}"
        if kind in (int, float) and opt.low is not None:
            high = opt.upper()
            if (not math.isfinite(item) or item < opt.low or (opt.low_open and item == opt.low)
                    or (high is not None and (item > high or (opt.high_open and item == high)))):
                return f"{label} must be {_range_text(opt, kind)} (got {item})"
    return None


def problems(obj: Any) -> list[str]:
    """Every declared field of ``obj`` checked against its declaration."""
    return [p for name, _ in options(type(obj)) if (p := field_problem(name, getattr(obj, name), type(obj)))]


def cast(name: str, value: Any, cls: type) -> Any:
    """``value`` as the field's type (a whole-number float to int; an int to float); refuses a fractional number
    for a whole-number field. Other values pass unchanged (the checks catch them)."""
    kind, _ = field_type(name, cls)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if kind is int and isinstance(value, float):
        if not value.is_integer():
            raise InputError(f"{name} must be a whole number (got {value})")
        return int(value)
    return float(value) if kind is float else value


def parse_text(name: str, text: str, cls: type) -> Any:
    """A command-line text for (one value of) the field ``name``: its type, its ``words`` as they are, checked
    against its declaration; raises ``ValueError`` with the reason (argparse shows it beside the option)."""
    opt = dict(options(cls))[name]
    if text.strip().lower() in opt.words:
        return text.strip().lower()
    kind, _, many = field_shape(name, cls)
    if kind in (int, float):
        try:
            value = float(text) if kind is float else int(text)
        except ValueError:
            words = "".join(f" or '{w}'" for w in opt.words)
            raise ValueError(f"expected {'a whole number' if kind is int else 'a number'}{words}, got {text!r}")\
                from None
    else:
        value = text
    problem = field_problem(name, (value,) if many else value, cls)
    if problem:
        raise ValueError(problem)
    return value


_JSON_TYPES: dict[type, tuple[tuple[type, ...], str, str]] = {
    str: ((str,), "a string", "string"), int: ((int,), "a whole number", "integer"),
    float: ((int, float), "a number", "number"), bool: ((bool,), "true or false", "boolean")}


def json_type(kind: type) -> str:
    """The JSON schema type name of a field type."""
    return _JSON_TYPES[kind][2]


def check_values(data: Any, source: str, cls: type, what: str = "run setting") -> dict[str, Any]:
    """``data`` (a JSON object of some or all of ``cls``' fields) checked against each field's type: known names,
    the JSON type (no coercion: ``"false"``, ``1`` for a flag, ``true`` for a number, ``2.5`` for a whole number
    are refused), finite numbers; an :class:`InputError` names the file, the field and the value. Returns the
    values with numbers as the field's type (and lists as tuples)."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: {what}s must be a JSON object (got {type(data).__name__})")
    names = [n for n, _ in options(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InputError(f"{source}: unknown {what}(s) {unknown}; known: {', '.join(names)}")
    out = {}
    for name, value in data.items():
        kind, nullable, many = field_shape(name, cls)
        types, word, _ = _JSON_TYPES[kind]
        if value is None and nullable:
            out[name] = None
            continue
        items = value if many and isinstance(value, list) else [value]
        bad = (many and not isinstance(value, list)) or any(
            not isinstance(v, types) or (isinstance(v, bool) and kind is not bool)
            or (isinstance(v, float) and not math.isfinite(v)) for v in items)
        if bad:
            word = f"a list of {word.removeprefix('a ')}s" if many else word
            word += " or null (Otsu)" if nullable and name == "threshold" else " or null" if nullable else ""
            raise InputError(f"{source}: {name} must be {word} (got {json_repr(value)})")
        converted = [float(v) if kind is float else v for v in items]
        out[name] = tuple(converted) if many else converted[0]
    return out


def json_repr(value: Any) -> str:
    """A value as JSON shows it, shortened (for messages)."""
    import json

    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def add_arguments(parser: argparse.ArgumentParser, cls: type, command: str, given_only: bool = False) -> None:
    """``--<field-name>`` for each field of ``cls`` that ``command`` takes: its help, metavar, choices, and a parser
    that checks the declared range (a list takes several values). ``given_only``: every option defaults to None,
    "not given" (run settings: the bundle's value, else the default); otherwise the field's default (and a field
    without one is required)."""
    import dataclasses

    for f in fields(cls):
        opt = f.metadata.get("option")
        if opt is None or command not in opt.commands:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind, nullable, many = field_shape(f.name, cls)
        if kind is bool and not many and opt.negative:  # --x / --not-x, neither: None
            pair = parser.add_mutually_exclusive_group()
            pair.add_argument(flag, dest=f.name, action="store_true", default=None, help=opt.help)
            pair.add_argument(opt.negative[0], dest=f.name, action="store_false", help=opt.negative[1])
            continue
        if kind is bool and not many:
            parser.add_argument(flag, action="store_true", help=opt.help)
            continue

        def parse(text: str, name: str = f.name) -> object:
            try:
                return parse_text(name, text, cls)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        parse.__name__ = kind.__name__
        extra: dict[str, Any] = {"nargs": "+"} if many else {}
        if opt.choices and not opt.words:
            extra["choices"] = list(opt.choices)
        if given_only:
            extra["default"] = None
        elif f.default is not dataclasses.MISSING:
            extra["default"] = list(f.default) if many and f.default is not None else f.default
        else:
            extra["required"] = True
        parser.add_argument(flag, metavar=opt.metavar, help=opt.help, type=parse, **extra)


def given(args: argparse.Namespace, cls: type, command: str) -> dict[str, Any]:
    """The values of ``cls``' options that ``args`` gives explicitly (lists as tuples; an option left out, or an
    absent flag, is not given; a ``bool | None`` field's False is given)."""
    out = {}
    for name, opt in options(cls):
        value = getattr(args, name, None)
        if command not in opt.commands or value is None or (value is False and not field_type(name, cls)[1]):
            continue
        out[name] = tuple(value) if isinstance(value, list) else value
    return out


def typed_fields(cls: type, data: Any, source: str) -> dict[str, Any]:
    """``data`` (a JSON object) as keyword arguments of the dataclass ``cls``, each value checked against its
    annotation without coercion (str, bool, int, float (a JSON integer too), optional, tuple of str, dict, a nested
    dataclass); unknown and missing fields are refused. An :class:`InputError` names ``source``, field and value."""
    import dataclasses

    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a JSON object (got {type(data).__name__})")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise InputError(f"{source}: unknown field(s) {unknown}; known: {', '.join(hints)}")
    missing = [f.name for f in fields(cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data]
    if missing:
        raise InputError(f"{source}: missing field(s) {missing}")
    out = {}
    for name, value in data.items():
        hint = hints[name]
        args = typing.get_args(hint)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), hint) if optional else hint
        origin = typing.get_origin(base) or base
        if value is None and optional:
            out[name] = None
            continue
        if dataclasses.is_dataclass(base):
            out[name] = base(**typed_fields(base, value, f"{source}: {name}"))
            continue
        if origin is tuple:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif origin is dict:
            ok = isinstance(value, dict)
        elif base in (int, float):
            ok = isinstance(value, int if base is int else int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, base)
        if not ok:
            raise InputError(f"{source}: {name} must be {_json_word(base, optional)} (got {json_repr(value)})")
        out[name] = tuple(value) if origin is tuple else float(value) if base is float else value
    return out


def _json_word(kind: Any, optional: bool) -> str:
    origin = typing.get_origin(kind) or kind
    word = {str: "a string", bool: "true or false", int: "a whole number", float: "a number",
            tuple: "a list of strings", dict: "a JSON object"}.get(origin, str(kind))
    return word + (" or null" if optional else "")


def scan_input_problems(request: Any, flags: dict[str, str]) -> list[str]:
    """What the requests that read a scan with its organ mask (``run``/``baseline``, ``synthesize``) refuse alike: an
    empty path in ``images`` or in a field of ``flags`` (field -> its option), more than one organ-mask source, and
    ``skull_stripped`` for another organ than the brain (``organ`` None: not known yet)."""
    out = [f"{flag}: an empty path" for name, flag in flags.items() if getattr(request, name) == ""]
    if any(not str(p).strip() for p in request.images):
        out.append("--input: an empty path")
    if sum(map(bool, (request.mask, request.totalseg, request.skull_stripped))) > 1:
        out.append("give one organ-mask source: a mask, TotalSegmentator's output or skull-stripped")
    if request.skull_stripped and request.organ not in (None, "brain"):
        out.append(f"--skull-stripped is for a skull-stripped brain: the {request.organ} needs its organ mask "
                   "(--mask, --totalseg, or TotalSegmentator)")
    return out
