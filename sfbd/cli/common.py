"""Options shared by subcommands."""

from __future__ import annotations

import argparse


def add_config(
    p: argparse.ArgumentParser, required: bool = True, default: str | None = None
) -> None:
    """`--config` (a preset or a YAML file) and repeatable `--set key=value`. When not
    `required`, `default` says in words what an absent `--config` means (the value is None)."""
    from sfbd.config import preset_names

    what = f"a preset ({', '.join(preset_names())}) or a YAML file"
    p.add_argument(
        "--config",
        required=required,
        help=f"{what}; default: {default}" if default else what,
    )
    add_set(p)


def add_set(p: argparse.ArgumentParser) -> None:
    """Repeatable `--set key=value` config overrides."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=2e-4 (repeatable)",
    )


def add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=None,
        help="Ray address; default: RAY_ADDRESS, else a cluster `ray start` began on this "
        "machine, else a new local one; `local` always starts a new local one",
    )


def floats(flag: str):
    """An argparse type for comma-separated numbers, naming `flag` in its error."""

    def parse(text: str) -> tuple[float, ...]:
        try:
            return tuple(float(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: {text!r} is not a list of numbers") from None

    return parse


def ints(flag: str):
    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag}: {text!r} is not a list of integers"
            ) from None

    return parse


class Renamed(argparse.Action):
    """A flag that was renamed: refused with the new name."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is now {self.new} (the observation noise is tau)")
