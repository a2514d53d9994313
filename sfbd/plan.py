"""The plan of a run (Lu, Wu & Yu 2025, Algorithm 1): pretrain, evaluate, then for
k = 1..K denoise -> refit -> evaluate. A stage is a small typed value; its `key` is how the
run's state names it (`pretrain`, `denoise_001`, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["pretrain", "denoise", "refit", "evaluate"]
KINDS: tuple[str, ...] = ("pretrain", "denoise", "refit", "evaluate")


@dataclass(frozen=True)
class Stage:
    kind: Kind
    iteration: int  # 0: pretraining and its evaluation; k >= 1: SFBD iteration k

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"stage: unknown kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        at_zero = self.kind in ("pretrain", "evaluate")
        within = self.iteration == 0 if self.kind == "pretrain" else self.iteration >= 1 - at_zero
        if not within:
            raise ValueError(f"stage: {self.kind} cannot run at iteration {self.iteration}")

    @property
    def key(self) -> str:
        return "pretrain" if self.kind == "pretrain" else f"{self.kind}_{self.iteration:03d}"

    def __str__(self) -> str:
        return self.key

    @classmethod
    def parse(cls, key: str) -> Stage:
        """Inverse of `key`."""
        if key == "pretrain":
            return cls("pretrain", 0)
        kind, sep, num = key.partition("_")
        if not sep or not num.isdigit():
            raise ValueError(f"stage: {key!r} is not a stage name (e.g. pretrain, denoise_001)")
        return cls(kind, int(num))  # type: ignore[arg-type]

    @property
    def trains(self) -> bool:
        return self.kind in ("pretrain", "refit")


def plan(iterations: int) -> list[Stage]:
    """Every stage of a run with K = `iterations`, in order."""
    stages = [Stage("pretrain", 0), Stage("evaluate", 0)]
    for k in range(1, iterations + 1):
        stages += [Stage("denoise", k), Stage("refit", k), Stage("evaluate", k)]
    return stages
