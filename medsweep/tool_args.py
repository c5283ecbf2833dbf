"""The key=value command lines of the small tools (predict, serve, explain): `model=... input=...`,
like the sweep's Hydra overrides, without Hydra (only the sweep CLI composes configs)."""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

from medsweep.config import ConfigError


def parse_key_values(argv: Sequence[str], known: Sequence[str], required: Sequence[str] = (),
                     positive_ints: Sequence[str] = (), defaults: Optional[dict] = None) -> dict:
    """{key: value} from `key=value` items; unknown keys, missing required keys and non-positive
    integers raise ConfigError (one line, naming the argument)."""
    args = dict(defaults or {})
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"arguments are key=value, got {item!r}")
        if key not in known:
            raise ConfigError(f"unknown argument {key!r}; known: {', '.join(known)}")
        args[key] = value
    for name in required:
        if not args.get(name):
            raise ConfigError(f"missing {name}=...")
    for name in positive_ints:
        if name in args and not isinstance(args[name], int):
            if not str(args[name]).isdigit() or int(args[name]) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {args[name]!r}")
            args[name] = int(args[name])
    return args


def tool_main(prog: str, usage: str, argv: Optional[Sequence[str]], body: Callable[[list[str]], int]) -> int:
    """Help and usage, then `body(argv)`; a ConfigError becomes `<prog>: error: ...` and exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    try:
        return body(argv)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
