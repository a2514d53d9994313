"""The documentation against the code: README length, relative links in README.md and
docs/*.md, and docs/configuration.md's tables against the fields of `SFBDConfig` (keys and
defaults). Plain file parsing and dataclass introspection: no Ray, seconds."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from sfbd.config import SFBDConfig

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIG_DOC = DOCS / "configuration.md"
TOP_LEVEL = ("name", "iterations", "seed", "baselines")
MISSING = object()


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def without_code(text: str) -> str:
    """The text with fenced code blocks and inline code spans blanked out."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def relative_links(text: str) -> list[str]:
    """Targets of inline links `[text](target)` that are not URLs or pure anchors."""
    targets = re.findall(
        r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", without_code(text)
    )
    return [
        t
        for t in targets
        if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t) and not t.startswith("#")
    ]


def config_fields(cls=SFBDConfig, prefix: str = "") -> dict[str, object]:
    """Every leaf field of the config, dotted (`data.tau`), with its default."""
    hints = typing.get_type_hints(cls)
    out: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(config_fields(tp, f"{prefix}{f.name}."))
        elif f.default is not dataclasses.MISSING:
            out[prefix + f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[prefix + f.name] = f.default_factory()
        else:
            out[prefix + f.name] = MISSING
    return out


def documented_rows() -> list[tuple[str, str]]:
    """(key, default cell) of every table row of configuration.md whose first cell is a
    backticked `section.key` or a backticked top-level key."""
    rows = []
    for line in CONFIG_DOC.read_text().splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) < 3:
            continue
        m = re.fullmatch(r"`([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)`", cells[0])
        if not m:
            continue
        key = m.group(1)
        if "." in key or key in TOP_LEVEL:
            rows.append((key, cells[1]))
    return rows


def parse_default(cell: str):
    return yaml.safe_load(cell.replace("`", "").strip())


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, (
        f"README.md has {len(lines)} lines; at most 250 (move detail to docs/)"
    )


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_exist(page: Path):
    broken = []
    for target in relative_links(page.read_text()):
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files: {broken}"


def test_docs_pages_exist():
    for name in (
        "configuration",
        "run-directory",
        "cluster",
        "evaluation",
        "studies",
        "results",
        "math",
        "development",
        "scale",
    ):
        page = DOCS / f"{name}.md"
        assert page.is_file(), f"missing {page.relative_to(ROOT)}"
        assert f"docs/{name}.md" in README.read_text(), f"README.md does not link docs/{name}.md"


def test_configuration_reference_lists_every_key():
    rows = documented_rows()
    keys = [k for k, _ in rows]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicated, f"docs/configuration.md documents these keys twice: {duplicated}"
    fields = config_fields()
    missing = sorted(set(fields) - set(keys))
    extra = sorted(set(keys) - set(fields))
    assert not missing and not extra, (
        f"docs/configuration.md against SFBDConfig: undocumented keys {missing}; "
        f"documented keys that SFBDConfig lacks {extra}"
    )


def test_configuration_reference_defaults():
    fields = config_fields()
    wrong = []
    for key, cell in documented_rows():
        if key not in fields:
            continue  # reported by test_configuration_reference_lists_every_key
        default = fields[key]
        try:
            documented = parse_default(cell)
        except yaml.YAMLError:
            documented = cell
        if default is MISSING:
            wrong.append(f"{key}: no default in SFBDConfig, documented {cell!r}")
        elif type(documented) is bool or type(default) is bool:
            if documented is not default:
                wrong.append(f"{key}: documented {cell!r}, default {default!r}")
        elif documented != default:
            wrong.append(f"{key}: documented {cell!r}, default {default!r}")
    assert not wrong, "docs/configuration.md defaults differ from SFBDConfig:\n" + "\n".join(wrong)
