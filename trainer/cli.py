"""One way to build a command's command line: a flag per field of its configuration dataclass, plus its own flags.

``--name-with-dashes`` per field, its default the field's, its type from the field's annotation (``int``, ``float``,
``str``, ``Path``, ``Optional[...]``; ``bool``: ``--x/--no-x``; ``tuple``: a list of values of its default's element
type, returned as a tuple); a field without a default is a positional argument (``SRC OUT``), in field order. Choices and help come from the command, per field name; a command adds flags of its own
(how it runs, not what it computes) to the parser afterwards, and :func:`parse` returns them beside the config.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

_TYPES = {"int": int, "float": float, "str": str, "Path": Path}
_TYPES |= {f"Optional[{k}]": t for k, t in _TYPES.items()} | {f"{k} | None": t for k, t in _TYPES.items()}


def parser(config: type, prog: str, description: str, *, choices: Mapping[str, Sequence] = {},
           help: Mapping[str, str] = {}, nargs: Mapping[str, str] = {}, switches: Mapping[str, str] = {}
           ) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with a flag per field of the dataclass ``config``, in field order. ``nargs``: a tuple
    field's (default ``"*"``). ``switches``: a bool field's form, ``"store_true"`` (``--x`` only) or ``"no"``
    (``--no-x`` only); default ``--x/--no-x``."""
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(config):
        flag, kind = "--" + f.name.replace("_", "-"), f.type if isinstance(f.type, str) else f.type.__name__
        text = help.get(f.name)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            p.add_argument(f.name, type=_TYPES[kind], help=text)
        elif kind == "bool":
            form = switches.get(f.name)
            if form == "store_true":
                p.add_argument(flag, action="store_true", default=f.default, help=text)
            elif form == "no":
                p.add_argument("--no-" + flag[2:], dest=f.name, action="store_false", default=f.default, help=text)
            else:
                p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=text)
        elif kind == "tuple":
            element = type(f.default[0]) if f.default else str
            p.add_argument(flag, nargs=nargs.get(f.name, "*"), type=element, default=list(f.default),
                           choices=choices.get(f.name), help=text)
        else:
            p.add_argument(flag, type=_TYPES[kind], default=f.default, choices=choices.get(f.name), help=text)
    return p


def add_tensorboard(p: argparse.ArgumentParser) -> None:
    """``--tensorboard/--no-tensorboard``: how a run is logged, not what it computes (so not a config field)."""
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="also write TensorBoard events to OUT/tensorboard (needs: pip install 'augcl[tensorboard]')")


def parse_with_tensorboard(config: type, prog: str, description: str, argv: Sequence[str] | None = None,
                           **kw) -> tuple[object, bool]:
    """:func:`parse` of :func:`parser` (``kw``: its options) plus ``--tensorboard/--no-tensorboard``: the config and
    whether to write TensorBoard events."""
    p = parser(config, prog, description, **kw)
    add_tensorboard(p)
    cfg, extra = parse(p, config, argv)
    return cfg, extra["tensorboard"]


def parse(p: argparse.ArgumentParser, config: type, argv: Sequence[str] | None = None) -> tuple[object, dict]:
    """``(config(...) from the fields' flags, {the command's own flags})``; lists become tuples."""
    args = vars(p.parse_args(argv))
    names = {f.name for f in dataclasses.fields(config)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items() if k in names}
    return config(**values), {k: v for k, v in args.items() if k not in names}
