"""trainer.cli: the one helper every command builds its command line with (a flag per config field)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from trainer import cli


@dataclass(frozen=True)
class Toy:
    src: Path
    out: str
    n: int = 1
    rate: float = 0.5
    jobs: Optional[int] = None
    where: Optional[Path] = None
    quiet: bool = False
    fast: bool = True
    tb: bool = True
    items: tuple = ("a", "b")
    mode: str = "x"


def _parser():
    return cli.parser(Toy, "toy", "a toy command", choices={"mode": ("x", "y")}, help={"n": "how many"},
                      switches={"quiet": "store_true", "tb": "no"})


def test_defaults_and_positionals_in_field_order():
    cfg, extra = cli.parse(_parser(), Toy, ["in/", "out/"])
    assert cfg == Toy(Path("in/"), "out/") and extra == {}
    assert isinstance(cfg.src, Path) and isinstance(cfg.items, tuple)


def test_every_kind_of_field_parses_to_its_type():
    cfg, _ = cli.parse(_parser(), Toy, ["s", "o", "--n", "3", "--rate", "0.25", "--jobs", "2", "--where", "w",
                                        "--quiet", "--no-fast", "--no-tb", "--items", "p", "q", "r", "--mode", "y"])
    assert cfg == Toy(Path("s"), "o", 3, 0.25, 2, Path("w"), True, False, False, ("p", "q", "r"), "y")


@pytest.mark.parametrize("argv, words", [(["s"], "the following arguments are required: out"),
                                         (["s", "o", "--mode", "z"], "invalid choice: 'z'"),
                                         (["s", "o", "--n", "x"], "invalid int value: 'x'"),
                                         (["s", "o", "--tb"], "unrecognized arguments: --tb")])
def test_bad_arguments_are_usage_errors_naming_the_flag(argv, words, capsys):
    with pytest.raises(SystemExit) as info:
        cli.parse(_parser(), Toy, argv)
    assert info.value.code == 2 and words in capsys.readouterr().err


def test_a_commands_own_flags_come_back_beside_the_config():
    p = _parser()
    cli.add_tensorboard(p)
    cfg, extra = cli.parse(p, Toy, ["s", "o", "--no-tensorboard"])
    assert cfg == Toy(Path("s"), "o") and extra == {"tensorboard": False}
    assert "how many" in p.format_help()
