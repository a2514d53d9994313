"""What a sweep varies: config keys swept over grid values (`--grid KEY=V1,V2`) or drawn at
random from ranges (`--range KEY=LOW:HIGH[:log]`), and seeds (`--seeds N`). Parsing and
checking happen here, before Ray starts; `param_space` turns the axes into Ray Tune's search
space, and `point_config` / `trial_name` turn one trial's values back into its configuration
and its run directory's name."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
import types
import typing
from dataclasses import dataclass

import yaml

from sfbd.config import SFBDConfig, from_dict, renamed_keys

# `--seeds N` sets both: the training and sampling noise, and the clean/noisy split with the
# observation noise. A seed is then a whole independent repeat of the experiment.
SEED_KEYS = ("seed", "data.seed")
GRID_CHECK_LIMIT = 256  # grid points whose configs are all built before the sweep starts


@dataclass(frozen=True)
class GridAxis:
    """A config key and the values it takes, every one a trial (times the other axes)."""

    key: str
    values: tuple
    flag: str = "--grid"  # how the user gave it, for error messages


@dataclass(frozen=True)
class RangeAxis:
    """A config key drawn at random for each trial: uniform in [low, high], or log-uniform;
    integer keys draw integers from low to high inclusive."""

    key: str
    low: float
    high: float
    log: bool = False
    integer: bool = False
    flag: str = "--range"


def field_type(key: str):
    """The annotation of a dotted config key (`train.lr` -> float), or None when unknown."""
    cls = SFBDConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        tp = hints[part]
        if i == len(parts) - 1:
            return None if dataclasses.is_dataclass(tp) else tp
        if not dataclasses.is_dataclass(tp):
            return None
        cls = tp
    return None


def _accepts(tp, kind) -> bool:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return kind in typing.get_args(tp)
    return tp is kind


def _value(key: str, raw: str):
    """One value parsed as YAML, like `--set`; `1e-3` (a string to YAML) is a number for a
    float key."""
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str) and _accepts(field_type(key), float):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _split(flag: str, text: str, example: str) -> tuple[str, str]:
    key, sep, rest = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"{flag} {text!r}: expected KEY={example}")
    if key == "data.sigma":  # the old name of the observation noise
        key = "data.tau"
    return key, rest


def parse_grid(text: str) -> GridAxis:
    """`KEY=V1,V2,...` (values parsed as YAML)."""
    key, rest = _split("--grid", text, "V1,V2,..., e.g. train.lr=1e-3,2e-3")
    values = tuple(_value(key, v) for v in rest.split(",") if v.strip())
    if not values:
        raise ValueError(f"--grid {key}: no values; give a comma-separated list, e.g. {key}=A,B")
    return GridAxis(key, values, f"--grid {key}")


def parse_range(text: str) -> RangeAxis:
    """`KEY=LOW:HIGH` (uniform) or `KEY=LOW:HIGH:log` (log-uniform)."""
    key, rest = _split("--range", text, "LOW:HIGH[:log], e.g. train.lr=1e-4:1e-2:log")
    flag = f"--range {key}"
    parts = rest.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise ValueError(f"{flag}: {rest!r}; expected LOW:HIGH or LOW:HIGH:log")
    tp = field_type(key)
    integer = tp is not None and _accepts(tp, int) and not _accepts(tp, float)
    try:
        low, high = (int(p) if integer else float(p) for p in parts[:2])
    except ValueError:
        kind = "integers" if integer else "numbers"
        raise ValueError(f"{flag}: {rest!r}; LOW and HIGH must be {kind}") from None
    log = len(parts) == 3
    if not low < high:
        raise ValueError(f"{flag}: LOW {low:g} must be below HIGH {high:g}")
    if log and low <= 0:
        raise ValueError(f"{flag}: a log range needs LOW > 0 (got {low:g})")
    return RangeAxis(key, low, high, log, integer, flag)


def format_value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def short_names(keys: list[str]) -> dict[str, str]:
    """Each key's last part (`train.lr` -> `lr`) where that is unique among `keys`."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def trial_name(point: dict) -> str:
    """A trial's run-directory name from its values: `lr=0.001_seed=0`."""
    names = short_names(list(point))
    text = "_".join(f"{names[k]}={format_value(v)}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", text)


def _set(data: dict, key: str, value) -> None:
    node = data
    for part in key.split(".")[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"config: {key}: {part} is not a section")
    node[key.split(".")[-1]] = value


def point_config(base: dict, point: dict, seeds: bool = False) -> SFBDConfig:
    """The validated config of one trial: `base` (a config's `to_dict()`) with `point`'s keys
    set; with `seeds` (a `--seeds` sweep), `point["seed"]` sets every key of `SEED_KEYS`."""
    data = copy.deepcopy(base)
    for key, value in point.items():
        for k in SEED_KEYS if seeds and key == "seed" else (key,):
            _set(data, k, value)
    config = from_dict(SFBDConfig, renamed_keys(data, note=lambda _: None))
    config.validate()
    return config


@dataclass
class SearchSpace:
    """The axes of a sweep: grid axes, random ranges, `seeds` seeds per point (0: the
    config's own seeds) and `samples` random draws of the ranges."""

    grid: tuple[GridAxis, ...] = ()
    ranges: tuple[RangeAxis, ...] = ()
    seeds: int = 0
    samples: int = 1

    def keys(self) -> list[str]:
        """The table's axis columns, in the order given; `seed` last."""
        keys = [a.key for a in self.grid] + [a.key for a in self.ranges]
        return keys + (["seed"] if self.seeds else [])

    def validate(self, config: SFBDConfig | None = None) -> None:
        """One-line `ValueError` naming the flag; with `config`, every grid value and range
        end is also checked against the config's keys, types and rules."""
        seen: dict[str, str] = {}
        for axis in (*self.grid, *self.ranges):
            if axis.key in seen:
                raise ValueError(f"{axis.flag}: {axis.key} is already swept by {seen[axis.key]}")
            seen[axis.key] = axis.flag
        for axis in self.grid:
            if not axis.values:
                raise ValueError(f"{axis.flag}: give at least one value")
            # Equal values would be two trials on one run directory (`trial_name` names it).
            names = [format_value(v) for v in axis.values]
            if len(set(names)) != len(names):
                raise ValueError(f"{axis.flag}: {','.join(names)} repeats a value")
        if self.seeds < 0:
            raise ValueError(f"--seeds: {self.seeds}; must be >= 1 (or 0: the config's seeds)")
        if self.seeds:
            for key in SEED_KEYS:
                if key in seen:
                    raise ValueError(f"--seeds: {seen[key]} already sweeps {key}")
            if self.ranges:
                raise ValueError(
                    "--seeds: not with --range (Ray Tune draws new range values for every "
                    "trial, so the seeds of one draw would not share its values)"
                )
        if self.samples < 1:
            raise ValueError(f"--samples: {self.samples}; must be >= 1")
        if self.samples > 1 and not self.ranges:
            raise ValueError("--samples: draws the --range axes; give at least one --range")
        if config is not None:
            self._check_against(config)

    def _check_against(self, config: SFBDConfig) -> None:
        base = config.to_dict()

        def check(flag: str, point: dict) -> None:
            try:
                point_config(base, point)
            except (ValueError, OSError) as exc:
                raise type(exc)(f"{flag}: {exc}") from None

        for axis in self.grid:
            for value in axis.values:
                check(axis.flag, {axis.key: value})
        for axis in self.ranges:
            for value in (axis.low, axis.high):
                check(axis.flag, {axis.key: value})
        points = self.grid_points()
        if len(self.grid) > 1 and len(points) <= GRID_CHECK_LIMIT:
            for point in points:  # keys that constrain each other (batch size and workers)
                check(", ".join(a.flag for a in self.grid), point)

    def grid_points(self) -> list[dict]:
        """Every combination of the grid axes' values (no seeds, no ranges)."""
        combos = itertools.product(*(a.values for a in self.grid))
        return [dict(zip([a.key for a in self.grid], c, strict=True)) for c in combos]

    def trials(self) -> int:
        return len(self.grid_points()) * max(self.seeds, 1) * self.samples

    def param_space(self) -> dict:
        """Ray Tune's search space: a grid_search per grid axis and for the seeds, a
        (log)uniform / (log)randint per range; `num_samples` is `samples`."""
        from ray import tune

        space: dict = {a.key: tune.grid_search(list(a.values)) for a in self.grid}
        for a in self.ranges:
            if a.integer:
                draw = tune.lograndint if a.log else tune.randint
                space[a.key] = draw(int(a.low), int(a.high) + 1)  # upper end exclusive
            else:
                space[a.key] = (tune.loguniform if a.log else tune.uniform)(a.low, a.high)
        if self.seeds:
            space["seed"] = tune.grid_search(list(range(self.seeds)))
        return space
