"""The `sfbd` console script: one module per subcommand, each with `add_arguments(parser)`
and `main(args) -> exit code`. Errors become one line on stderr: bad input exits 2 before any
work, a failed stage exits 1 (its run directory resumes)."""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence

# subcommand -> module under sfbd.cli (imported only when used: keeps `sfbd --help` fast)
COMMANDS = {
    "run": "run",
    "prepare": "prepare",
    "sample": "sample",
    "sweep": "sweep",
    "benchmark": "benchmark",
    "nfe-study": "nfe_study",
    "experiment": "experiment",
    "train-classifier": "train_classifier",
    "config": "config_cmd",
}


def command(name: str):
    return importlib.import_module(f"sfbd.cli.{COMMANDS[name]}")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    from sfbd import __version__

    parts = []
    for dist in ("ray", "torch"):
        try:
            parts.append(f"{dist} {installed(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return f"sfbd {__version__} ({', '.join(parts)})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfbd",
        allow_abbrev=False,
        description="Stochastic Forward-Backward Deconvolution (Lu, Wu & Yu, ICML 2025) on Ray.",
    )
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = command(name)
        summary = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
        p = sub.add_parser(
            name,
            allow_abbrev=False,
            help=re.split(r"(?<=[a-z)])[.:] ", summary + " ")[0],
            description=summary,
        )
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from sfbd.run import StageFailed

    args = build_parser().parse_args(argv)
    try:
        return args._main(args)
    except StageFailed as exc:
        print(exc.line(), file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
