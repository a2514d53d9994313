"""Show a configuration: a preset or YAML file resolved (with `--set` overrides), every key
with its value and meaning.

    sfbd config show toy2d
    sfbd config show fashion-mnist-cpu --set iterations=5
    sfbd config list
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from sfbd.cli.common import add_set

# The meaning of each key is the configuration reference's table (checked against the
# dataclasses by tests/test_docs.py), read from the source tree when it is there.
REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show", "list"], help="show one config; list the presets")
    p.add_argument("name", nargs="?", help="for show: a preset name or a YAML file")
    add_set(p)


def meanings() -> dict[str, str]:
    """key -> meaning, from the reference's `| key | default | meaning |` rows."""
    if not REFERENCE.is_file():
        return {}
    rows = re.findall(r"^\| `([A-Za-z0-9_.]+)` \| [^|]* \| (.*) \|$", REFERENCE.read_text(), re.M)
    return {key: re.sub(r"\[([^]]*)\]\([^)]*\)", r"\1", text) for key, text in rows}


def _value(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True, width=1000).strip().removesuffix("...")


def describe(config) -> str:
    """The resolved config as YAML, one key per line with its meaning as a comment."""
    about = meanings()
    lines = []
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            for sub, v in value.items():
                text = f"  {sub}: {_value(v).strip()}"
                note = about.get(f"{key}.{sub}")
                lines.append(f"{text:<40} # {note}" if note else text)
        else:
            text = f"{key}: {_value(value).strip()}"
            note = about.get(key)
            lines.append(f"{text:<40} # {note}" if note else text)
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from sfbd.config import load_config, preset_names

    if args.action == "list":
        print("\n".join(preset_names()))
        return 0
    if not args.name:
        raise ValueError("config show: give a preset name or a YAML file")
    print(describe(load_config(args.name, list(args.set))))
    return 0
