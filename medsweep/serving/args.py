"""The key=value command lines of the small tools (predict, serve, explain): `model=... input=...`,
like the sweep's Hydra overrides, without Hydra (only the sweep CLI composes configs).

Each tool declares its arguments as a dataclass, as transformers' examples do (`run_glue.py`):
a field per argument with its type, default and `help`; `__post_init__` checks what types cannot.
`parse` turns `key=value` items into an instance (unknown keys refused with a did-you-mean), and
`usage` is generated from the fields, so the help cannot drift from what is accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import typing
from typing import Callable, Literal, Optional, Sequence, TypeVar

from medsweep.config import ConfigError

T = TypeVar("T")


def arg(help: str, default=dataclasses.MISSING, metavar: str | None = None, minimum: int = 1):
    """A dataclass field with its help text, the placeholder shown in the usage line and, for an
    integer, the smallest value accepted."""
    return dataclasses.field(default=default, metadata={"help": help, "metavar": metavar, "minimum": minimum})


def _convert(name: str, kind, text: str, minimum: int = 1):
    """`text` as the field's type: str, int (>= minimum), bool (true/false) or a Literal choice;
    Optional[X] takes X (an empty value stays "": tools use it to switch a default off)."""
    origin, members = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union:  # Optional[X]
        kind = next(m for m in members if m is not type(None))
        origin, members = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        if text not in members:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, members))}, got {text!r}")
        return text
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ConfigError(f"{name} must be true or false, got {text!r}")
        return text.lower() == "true"
    if kind is int:
        if not text.isdigit() or int(text) < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ConfigError(f"{name} must be {what}, got {text!r}")
        return int(text)
    return text


def parse(cls: type[T], argv: Sequence[str]) -> T:
    """An instance of the argument dataclass `cls` from `key=value` items. Raises ConfigError
    (one line, naming the argument)."""
    kinds = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    given: dict[str, object] = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"arguments are key=value, got {item!r}")
        if key not in fields:
            guess = difflib.get_close_matches(key, list(fields), n=1)
            raise ConfigError(f"unknown argument {key!r}" + (f"; did you mean {guess[0]}?" if guess else
                                                               f"; known: {', '.join(fields)}"))
        given[key] = _convert(key, kinds[key], value, fields[key].metadata.get("minimum", 1))
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and not given.get(name):
            raise ConfigError(f"missing {name}=...")
    return cls(**given)


def usage(cls, prog: str, prefix: str = "") -> str:
    """The usage line and one line of help per argument, from the dataclass fields."""
    parts, helps = [], []
    for f in dataclasses.fields(cls):
        metavar = f.metadata.get("metavar") or "..."
        required = f.default is dataclasses.MISSING
        parts.append(f"{f.name}={metavar}" if required else f"[{f.name}={metavar}]")
        default = "" if required or f.default in (None, "") else f" (default {str(f.default).lower() if isinstance(f.default, bool) else f.default})"
        helps.append(f"  {f.name:<18} {f.metadata.get('help', '')}{default}")
    return f"usage: {prefix}python -m {prog} " + " ".join(parts) + "\n" + "\n".join(helps)


def tool_main(prog: str, cls: type[T], argv: Optional[Sequence[str]], body: Callable[[T], Optional[str]],
              usage_prefix: str = "") -> int:
    """Help and usage, then `body(parsed arguments)`, whose message (if any) goes to stderr, exit 0;
    a ConfigError becomes `<prog>: error: ...`, exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(cls, prog, usage_prefix), file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    try:
        message = body(parse(cls, argv))
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if message:
        print(f"[medsweep] {message}", file=sys.stderr)
    return 0
