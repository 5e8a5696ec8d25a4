"""Settings: each tunable declared once, and everything else derived from it.

The table
=========

A setting is one field of a configuration dataclass (``config.Config`` and the
groups nested in it), declared with :func:`setting`::

    map_size: int = setting(STORAGE, Size(MIB, 16 * TIB), 64 * GIB, "LMDB map size ...")

The field's metadata holds the display group, the :class:`Kind` (parser,
bounds, how a value is printed) and the help text. :func:`table` walks the
dataclass and returns one :class:`Setting` per field, from which the rest is
derived: the config-file key (the setting's name, ``map_size``), the flag
(``--map-size``), the environment variable (``LIGHTHOUSE_MAP_SIZE``), the
argparse option and the README row. A group nested with :func:`nested`
(``subscriptions: SubscriptionSettings = nested(SubscriptionSettings, "subscribe_")``)
adds its fields, under an optional name prefix; a class that is not the
daemon's own (``Limits``, shared with the client) keeps its defaults and gets
its fields declared where it is nested, with :func:`declare`. A field that is
not declared is an error at import. Adding a setting is adding one field.

Sources
=======

Flag > environment variable > config file > default, per setting. Every
value is parsed and checked against its kind's bounds where it is read, and
an error (:class:`ConfigError`) names its source: the flag, the variable, or
``<file>: <key>``. The config file is TOML (``tomllib``) with flat keys, the
settings' names; a value may be its natural TOML type (an integer, a float,
a boolean) or the same string a flag takes (``"64GiB"``). A key that is no
setting is an error, so a typo never passes for a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
import tomllib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, cast

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB

ENV_PREFIX = "LIGHTHOUSE_"

T = TypeVar("T")
N = TypeVar("N", int, float)
E = TypeVar("E", bound=StrEnum)
C = TypeVar("C")


class ConfigError(ValueError):
    """A setting has a value the daemon cannot use."""


# -- kinds: parsing, bounds, printing --------------------------------------


class Kind(ABC, Generic[T]):
    """How one type of setting is read (from a flag, a variable or TOML) and shown."""

    metavar = "VALUE"

    @abstractmethod
    def parse(self, raw: object) -> T:
        """The value of ``raw`` (a ``str`` from a flag or variable; any TOML
        value from the file); raises ValueError with a message for the user."""

    def show(self, value: T) -> str:
        return str(value)

    def bounds(self) -> str:
        """The values allowed, for help and the README ("" if any goes)."""
        return ""

    def argparse_options(self) -> dict[str, Any]:
        return {"metavar": self.metavar}


class Bounded(Kind[N]):
    """A number between ``low`` and ``high`` inclusive."""

    what = "a number"

    def __init__(self, low: N, high: N) -> None:
        self.low: N = low
        self.high: N = high

    @abstractmethod
    def _number(self, raw: object) -> N | None:
        """The number ``raw`` spells, or None."""

    def parse(self, raw: object) -> N:
        value = None if isinstance(raw, bool) else self._number(raw)
        if value is None:
            raise ValueError(f"not {self.what}: {raw!r}")
        if value < self.low:
            raise ValueError(f"must be at least {self.show(self.low)}, got {raw!r}")
        if value > self.high:
            raise ValueError(f"must be at most {self.show(self.high)}, got {raw!r}")
        return value

    def bounds(self) -> str:
        return f"{self.show(self.low)}-{self.show(self.high)}"


_DIGITS = re.compile(r"\s*([0-9]+)\s*", re.ASCII)
_DECIMAL = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*", re.ASCII)


def _whole(raw: object) -> int | None:
    if isinstance(raw, str):
        m = _DIGITS.fullmatch(raw)
        return int(m[1]) if m else None
    return raw if isinstance(raw, int) else None


class Count(Bounded[int]):
    """A whole number: ``10000``."""

    what = "a whole number"
    metavar = "N"

    def _number(self, raw: object) -> int | None:
        return _whole(raw)


class Milliseconds(Bounded[int]):
    """A whole number of milliseconds: ``50``."""

    what = "a whole number of milliseconds"
    metavar = "MS"

    def _number(self, raw: object) -> int | None:
        return _whole(raw)


_SIZE = re.compile(r"\s*([0-9]+)\s*(?:([kmgt])(?:i?b)?|b)?\s*", re.ASCII | re.IGNORECASE)
_UNITS = {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": TIB}


class Size(Bounded[int]):
    """Bytes, with an optional binary suffix: ``4096``, ``64k``, ``16MiB``, ``64GiB``."""

    what = "a size"
    metavar = "BYTES"

    def _number(self, raw: object) -> int | None:
        if isinstance(raw, str):
            m = _SIZE.fullmatch(raw)
            return int(m[1]) * _UNITS[(m[2] or "").lower()] if m else None
        return raw if isinstance(raw, int) else None

    def show(self, value: int) -> str:
        for suffix, unit in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
            if value and value % unit == 0:
                return f"{value // unit}{suffix}"
        return str(value)


def _real(raw: object, percent: bool = False) -> float | None:
    if isinstance(raw, int | float):
        try:
            value = float(raw)
        except OverflowError:  # a TOML integer beyond any float
            return None
    elif isinstance(raw, str):
        text = raw.strip()
        divisor = 1.0
        if percent and text.endswith("%"):
            text, divisor = text[:-1], 100.0
        if not _DECIMAL.fullmatch(text):
            return None
        value = float(text) / divisor  # 95% is 0.95, as 95 * 0.01 is not
    else:
        return None
    return value if math.isfinite(value) else None


class Seconds(Bounded[float]):
    """A number of seconds, fractions allowed: ``2.5``."""

    what = "a number of seconds"
    metavar = "SECONDS"

    def _number(self, raw: object) -> float | None:
        return _real(raw)

    def show(self, value: float) -> str:
        return f"{value:g}"


class Ratio(Bounded[float]):
    """A fraction, or a percentage: ``0.25`` or ``25%``."""

    what = "a fraction or a percentage"
    metavar = "RATIO"

    def __init__(self, low: float = 0.0, high: float = 1.0) -> None:
        super().__init__(low, high)

    def _number(self, raw: object) -> float | None:
        return _real(raw, percent=True)

    def show(self, value: float) -> str:
        return f"{value * 100:g}%"


class Choice(Kind[E]):
    """One of an enum's values, in any case: ``fsync``."""

    def __init__(self, enum: type[E]) -> None:
        self.enum = enum
        self.metavar = "{" + ",".join(e.value for e in enum) + "}"

    def parse(self, raw: object) -> E:
        if isinstance(raw, str):
            for member in self.enum:
                if member.value.lower() == raw.strip().lower():
                    return member
        names = [repr(e.value) for e in self.enum]
        allowed = ", ".join(names[:-1]) + " or " + names[-1]
        raise ValueError(f"must be {allowed}, got {raw!r}")

    def show(self, value: E) -> str:
        return value.value

    def bounds(self) -> str:
        return ", ".join(e.value for e in self.enum)


class Bool(Kind[bool]):
    """On or off: ``--name``/``--no-name``, ``true``/``false`` in the environment or file."""

    _WORDS: ClassVar[dict[str, bool]] = {
        "true": True, "yes": True, "on": True, "1": True,
        "false": False, "no": False, "off": False, "0": False,
    }  # fmt: skip

    def parse(self, raw: object) -> bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in self._WORDS:
            return self._WORDS[raw.strip().lower()]
        raise ValueError(f"must be true or false, got {raw!r}")

    def show(self, value: bool) -> str:
        return "true" if value else "false"

    def argparse_options(self) -> dict[str, Any]:
        return {"action": argparse.BooleanOptionalAction}


class FilePath(Kind[Path]):
    """A file or directory path, not empty (an empty one would mean the working
    directory without saying so). Relative paths are from the working directory."""

    metavar = "PATH"

    def parse(self, raw: object) -> Path:
        if not isinstance(raw, str):
            raise ValueError(f"must be a path (a string), got {raw!r}")
        if not raw.strip():
            raise ValueError("must not be empty")
        if "\0" in raw:
            raise ValueError(f"must not contain a NUL character, got {raw!r}")
        return Path(raw)

    def bounds(self) -> str:
        return "not empty"


class OptionalFile(Kind[str]):
    """A file path, or ``""`` for none (the feature it names is off)."""

    metavar = "PATH"

    def parse(self, raw: object) -> str:
        if isinstance(raw, str) and raw.strip() in ("", '""'):  # as --help shows none
            return ""
        return str(FilePath().parse(raw))

    def show(self, value: str) -> str:
        return value or '""'

    def bounds(self) -> str:
        return 'a path, or `""` (none)'


class FileOrStream(Kind[str]):
    """A file path, or ``-`` for a standard stream (``stream`` names it)."""

    metavar = "PATH"

    def __init__(self, stream: str) -> None:
        self.stream = stream

    def parse(self, raw: object) -> str:
        if isinstance(raw, str) and raw.strip() == "-":
            return "-"
        return str(FilePath().parse(raw))

    def bounds(self) -> str:
        return f"a path, or `-` ({self.stream})"


class HostPort(Kind[str]):
    """``host:port`` (``[::1]:port`` for IPv6), a port of 0-65535 (0: any free port).
    gRPC itself would take an out-of-range port as "any"."""

    metavar = "HOST:PORT"

    def parse(self, raw: object) -> str:
        text = raw.strip() if isinstance(raw, str) else ""
        host, sep, port = text.rpartition(":")
        if not (sep and host and port.isascii() and port.isdigit() and int(port) <= 65535):
            raise ValueError(f"must be host:port with a port of 0-65535, got {raw!r}")
        return f"{host}:{int(port)}"

    def bounds(self) -> str:
        return "port 0-65535"


class HostPortOrOff(HostPort):
    """Like :class:`HostPort`, or ``off`` (:data:`OFF`): not served at all."""

    metavar = "HOST:PORT|off"

    def parse(self, raw: object) -> str:
        if isinstance(raw, str) and raw.strip().lower() == OFF:
            return OFF
        return super().parse(raw)

    def bounds(self) -> str:
        return f"port 0-65535, or {OFF}"


OFF = "off"


# -- declaring settings ------------------------------------------------------

_SETTING = "lighthouse.setting"
_NESTED = "lighthouse.nested"


@dataclass(frozen=True)
class Declared:
    """What a setting adds to a dataclass field: its group, kind and help."""

    group: str
    kind: Kind[Any]
    help: str


def setting(group: str, kind: Kind[T], default: T, help: str) -> T:
    """A dataclass field that is a setting (typed as its value, for the checker)."""
    return field(default=default, metadata={_SETTING: Declared(group, kind, help)})


def nested(cls: type[C], prefix: str = "", **declared: Declared) -> C:
    """A dataclass field holding a group of settings; ``prefix`` starts their names.

    A class that cannot declare its own fields as settings (one shared with
    the client, say) gets them declared here, by field name, with
    :func:`declare`; their defaults stay the class's own."""
    return field(default_factory=cls, metadata={_NESTED: (prefix, declared)})


def declare(group: str, kind: Kind[Any], help: str) -> Declared:
    """A setting for an existing field of a class given to :func:`nested`."""
    return Declared(group, kind, help)


@dataclass(frozen=True)
class Setting:
    """One row of the table."""

    name: str  # the config-file key; the flag and the variable derive from it
    path: tuple[str, ...]  # attributes from the top dataclass down to the value
    group: str
    kind: Kind[Any]
    default: object
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def parse(self, raw: object, where: str) -> object:
        try:
            return self.kind.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def table(cls: type[Any]) -> tuple[Setting, ...]:
    """Every setting of dataclass ``cls`` and its nested groups, in declaration order."""
    return tuple(_walk(cls, (), "", {}))


def _walk(
    cls: type[Any], path: tuple[str, ...], prefix: str, declared: Mapping[str, Declared]
) -> Iterator[Setting]:
    names = {f.name for f in fields(cls)}
    if unknown := set(declared) - names:
        raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)} to declare")
    for f in fields(cls):
        here = (*path, f.name)
        if _NESTED in f.metadata:
            more, inner = f.metadata[_NESTED]
            yield from _walk(_group_class(f), here, prefix + more, inner)
            continue
        d = declared.get(f.name) or f.metadata.get(_SETTING)
        if d is None:  # a tunable without a flag is what the table exists to prevent
            raise TypeError(f"{cls.__name__}.{f.name} is not declared as a setting")
        yield Setting(prefix + f.name, here, d.group, d.kind, f.default, d.help)


def _group_class(f: dataclasses.Field[Any]) -> type[Any]:
    return cast(type[Any], f.default_factory)


def build(cls: type[C], values: Mapping[tuple[str, ...], object], path: tuple[str, ...] = ()) -> C:
    """An instance of ``cls`` with ``values`` (by path) and defaults for the rest."""
    kwargs: dict[str, object] = {}
    for f in fields(cast(Any, cls)):
        here = (*path, f.name)
        if _NESTED in f.metadata:
            kwargs[f.name] = build(_group_class(f), values, here)
        elif here in values:
            kwargs[f.name] = values[here]
    return cls(**kwargs)


# -- reading the sources -----------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, settings: tuple[Setting, ...]) -> None:
    """One option per setting, in a help section per group; unset options are None."""
    sections: dict[str, argparse._ArgumentGroup] = {}
    for s in settings:
        if s.group not in sections:
            sections[s.group] = parser.add_argument_group(s.group)
        facts = "; ".join(x for x in (f"default {s.kind.show(s.default)}", s.kind.bounds()) if x)
        sections[s.group].add_argument(
            s.flag,
            dest=s.name,
            default=None,
            # The help is Markdown for the README table; a terminal wants it plain.
            help=f"{s.help} ({facts}) [{s.env}]".replace("`", "").replace("%", "%%"),
            **s.kind.argparse_options(),
        )


def read_file(path: str, settings: tuple[Setting, ...]) -> dict[str, object]:
    """The settings in TOML file ``path``, by name; every key must be a setting."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except ValueError as exc:  # TOMLDecodeError, or bytes that are not UTF-8
        raise ConfigError(f"{path}: not a valid TOML file: {exc}") from None
    names = [s.name for s in settings]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown setting {key!r}{hint}")
    return data


@dataclass(frozen=True)
class Resolved(Generic[C]):
    value: C
    where: dict[str, str]  # setting name -> what set it: flag, variable, "<file>: <key>"


def resolve(
    cls: type[C],
    settings: tuple[Setting, ...],
    *,
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    file_values: Mapping[str, object],
    file_name: str = "",
) -> Resolved[C]:
    """``cls`` from the first source that sets each setting: ``flags`` (by
    name, None = not given), ``environ``, ``file_values``, the default.
    Settings left at their defaults are named by their flag in ``where``."""
    values: dict[tuple[str, ...], object] = {}
    where: dict[str, str] = {}
    for s in settings:
        if flags.get(s.name) is not None:
            raw, where[s.name] = flags[s.name], s.flag
        elif s.env in environ:
            raw, where[s.name] = environ[s.env], s.env
        elif s.name in file_values:
            raw, where[s.name] = file_values[s.name], f"{file_name}: {s.name}"
        else:
            where[s.name] = s.flag
            continue
        values[s.path] = s.parse(raw, where[s.name])
    return Resolved(build(cls, values), where)


# -- the README table --------------------------------------------------------


def markdown_table(settings: tuple[Setting, ...]) -> str:
    """The settings as a Markdown table, a bold row starting each group."""
    lines = ["| flag | environment | default | allowed | meaning |", "|---|---|---|---|---|"]
    groups = list(dict.fromkeys(s.group for s in settings))
    for group in groups:
        lines.append(f"| **{group}** | | | | |")
        for s in (s for s in settings if s.group == group):
            cells = (f"`{s.flag}`", f"`{s.env}`", f"`{s.kind.show(s.default)}`",
                     s.kind.bounds(), s.help)  # fmt: skip
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
