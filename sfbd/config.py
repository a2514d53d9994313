"""The run configuration: one typed object, loaded from a preset or YAML file, overridden by
`key=value` strings, validated before any work, written back resolved into the run directory."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from sfbd.data.prepare import DataConfig
from sfbd.diffusion.augment import AUGMENT_DIM
from sfbd.diffusion.networks import PRESETS, MLPShape, NetworkConfig
from sfbd.diffusion.training import TrainConfig, check_ingest, check_refit_start
from sfbd.stopping import AUTO_CAP, StopConfig

__all__ = [
    "DataConfig",
    "DenoiseConfig",
    "EvalConfig",
    "NetworkConfig",
    "SFBDConfig",
    "StopConfig",
    "TrainConfig",
    "load_config",
]


@dataclass
class DenoiseConfig:
    """The backward-denoising stage (Ray Data)."""

    steps: int = 8  # noise levels in [sigma_min, tau]; 2 * steps - 1 network evaluations
    stochastic: bool = False  # False: probability-flow ODE; True: reverse SDE (posterior)
    sigma_min: float = 0.002
    batch_size: int = 256
    num_actors: int = 0  # 0: one per GPU, or one on a CPU-only cluster
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 1.0  # used when the cluster has GPUs
    threads: int = 0  # torch threads per actor; 0: Ray's default
    compile: bool = False  # torch.compile the denoiser once per actor (worth it on GPUs)
    out_dtype: str = "float32"  # storage of the denoised sets: float32 or float16 (half the bytes)


OUT_DTYPES = ("float32", "float16")


@dataclass
class EvalConfig:
    """Evaluation after pretraining and after every iteration."""

    num_samples: int = 1000
    # Evaluations per stage, each on its own num_samples (seed set s: sample ids s*N..(s+1)*N-1);
    # the row's metric is their mean, beside their min and each value (EDM reports the min of 3).
    seeds: int = 1
    steps: int = 18
    batch_size: int = 500
    grid: int = 8  # side of the sample grid (grid x grid images)
    seed: int = 1234
    projections: int = 256  # sliced Wasserstein projections
    threads: int = 0  # torch threads of the evaluation task; 0: Ray's default
    cpus: float = 1.0  # CPUs of the sampling actor (CPU-only clusters) and of the metrics task
    compile: bool = False  # torch.compile the denoiser of the sampling actors
    # Reference set of the distance: "clean" (the clean set), "test" / "train" (the test or
    # whole training split of data.dataset: cifar10, fashion-mnist, mnist; evaluation only) or
    # "npz:PATH". The toy uses true samples.
    reference: str = "clean"
    metric: str = "swd"  # swd (pixels), fid (Inception), fd (feature_net)
    # TorchScript feature extractor for metric fd, or classifier:fashion-mnist / classifier:mnist
    # (a small classifier trained once per machine into ~/.cache/sfbd/feature-nets)
    feature_net: str | None = None
    inception_weights: str | None = None  # pt_inception-2015-12-05-6726825d.pth; None: hub
    reference_stats: str | None = None  # .npz with mu, sigma (fid / fd); None: from reference
    memorization_threshold: float | None = None  # RMS pixel distance counted as a copy


BASELINE_KINDS = ("noisy", "clean-only", "all-clean")  # sfbd.baselines


@dataclass
class SFBDConfig:
    name: str = "custom"
    iterations: int = 3  # K: denoise -> refit -> evaluate rounds after pretraining (stop.auto: cap)
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    denoise: DenoiseConfig = field(default_factory=DenoiseConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    # Comparison models trained after the run, each for its whole budget (sfbd.baselines):
    # noisy, clean-only (pretraining continued), all-clean. `--baselines` replaces them.
    baselines: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Cheap checks with one-line errors naming the key; no I/O, no cluster."""
        unknown = [b for b in self.baselines if b not in BASELINE_KINDS]
        if unknown or len(set(self.baselines)) != len(self.baselines):
            raise ValueError(
                f"config: baselines = {self.baselines}; a list of distinct kinds: "
                f"{', '.join(BASELINE_KINDS)}"
            )
        positive = {
            "iterations": self.iterations,
            "train.batch_size": self.train.batch_size,
            "train.lr": self.train.lr,
            "train.refit_kimg": self.train.refit_kimg,
            "train.checkpoint_kimg": self.train.checkpoint_kimg,
            "train.log_kimg": self.train.log_kimg,
            "train.ema_halflife_kimg": self.train.ema_halflife_kimg,
            "train.cpus_per_worker": self.train.cpus_per_worker,
            "denoise.steps": self.denoise.steps,
            "denoise.batch_size": self.denoise.batch_size,
            "denoise.cpus_per_actor": self.denoise.cpus_per_actor,
            "eval.num_samples": self.eval.num_samples,
            "eval.seeds": self.eval.seeds,
            "eval.steps": self.eval.steps,
            "eval.batch_size": self.eval.batch_size,
            "eval.projections": self.eval.projections,
            "eval.cpus": self.eval.cpus,
        }
        for key, value in positive.items():
            if not value > 0:
                raise ValueError(f"config: {key} = {value!r}; must be > 0")
        kimg = self.train.pretrain_kimg
        if not (kimg > 0 or (kimg == 0 and self.train.init)):
            raise ValueError(
                f"config: train.pretrain_kimg = {kimg!r}; must be > 0, or 0 with train.init "
                f"(iteration 0 is then that checkpoint)"
            )
        nonneg = {
            "train.warmup_kimg": self.train.warmup_kimg,
            "train.max_failures": self.train.max_failures,
            "train.grad_clip": self.train.grad_clip,
            "denoise.num_actors": self.denoise.num_actors,
            "eval.grid": self.eval.grid,
        }
        for key, value in nonneg.items():
            if value < 0:
                raise ValueError(f"config: {key} = {value!r}; must be >= 0")
        if self.denoise.out_dtype not in OUT_DTYPES:
            raise ValueError(
                f"config: denoise.out_dtype = {self.denoise.out_dtype!r}; "
                f"allowed: {', '.join(OUT_DTYPES)}"
            )
        ref = self.eval.reference
        if ref not in ("clean", "test", "train") and not ref.startswith("npz:"):
            raise ValueError(
                f"config: eval.reference = {ref!r}; allowed: clean, test, train, npz:PATH"
            )
        if ref in ("test", "train") and self.data.dataset not in (
            "cifar10",
            "fashion-mnist",
            "mnist",
        ):
            raise ValueError(
                f"config: eval.reference = {ref} needs data.dataset cifar10, "
                f"fashion-mnist or mnist (got {self.data.dataset!r})"
            )
        if self.eval.metric not in ("swd", "fid", "fd"):
            raise ValueError(f"config: eval.metric = {self.eval.metric!r}; allowed: swd, fid, fd")
        if self.eval.metric == "fd" and not self.eval.feature_net:
            raise ValueError(
                "config: eval.metric = fd needs eval.feature_net (a TorchScript "
                "file, e.g. from jobs/train_classifier.py)"
            )
        from sfbd.metrics.classifier import check_classifier_spec, is_classifier_spec

        if is_classifier_spec(self.eval.feature_net):
            check_classifier_spec(self.eval.feature_net)
        for key in ("feature_net", "inception_weights", "reference_stats"):
            path = getattr(self.eval, key)
            if key == "feature_net" and is_classifier_spec(path):
                continue
            if path and not Path(path).is_file():
                raise FileNotFoundError(f"config: eval.{key} = {path} does not exist")
        w = self.train.clean_weight
        if w is not None and not 0 <= w <= 1:
            raise ValueError(
                f"config: train.clean_weight = {w}; must lie in [0, 1] (0: refit on the "
                f"denoised set alone, Algorithm 1 line 4) or be null (by set size)"
            )
        self._validate_augment()
        check_ingest(self.train)
        check_refit_start(self.train)
        workers = self.train.num_workers
        if workers < 0:
            raise ValueError(
                f"config: train.num_workers = {workers}; allowed: >= 1 DDP workers, "
                f"or 0 (Ray Train's local mode: train in the orchestrator's process)"
            )
        if workers == 0 and self.train.use_gpu:
            raise ValueError(
                "config: train.use_gpu needs train.num_workers >= 1 "
                "(local mode, 0, trains on the orchestrator's CPU)"
            )
        if self.train.batch_size % max(workers, 1):
            raise ValueError(
                f"config: train.batch_size = {self.train.batch_size} is not "
                f"divisible by train.num_workers = {workers}"
            )
        try:
            self.data.validate()
        except (ValueError, OSError) as exc:
            raise type(exc)(f"config: data.{exc}") from None
        self.network.shape()  # unknown preset or override keys
        try:
            self.stop.validate()
        except ValueError as exc:
            raise ValueError(f"config: {exc}") from None
        if self.stop.auto and self.data.holdout_fraction == 0:
            raise ValueError(
                "config: iterations: auto (stop.auto) reads noisy_distance, which needs "
                "data.holdout_fraction > 0"
            )

    def _validate_augment(self) -> None:
        """train.augment and network.augment_dim (sfbd.diffusion.augment)."""
        p, dim = self.train.augment, self.network.augment_dim
        if not 0 <= p <= 1:
            raise ValueError(f"config: train.augment = {p}; must lie in [0, 1]")
        vectors = isinstance(PRESETS.get(self.network.preset), MLPShape)
        if p > 0 and vectors:
            raise ValueError(
                f"config: train.augment = {p} needs an image network; network.preset = mlp "
                f"(vectors) takes no augmentation: use train.augment = 0"
            )
        if dim not in (0, AUGMENT_DIM) or (dim and vectors):
            raise ValueError(
                f"config: network.augment_dim = {dim}; allowed: 0, or {AUGMENT_DIM} "
                f"(the augmentation labels) with an image network"
            )
        if p > 0 and dim == 0:
            raise ValueError(
                f"config: train.augment = {p} needs network.augment_dim = {AUGMENT_DIM} "
                f"(set when a config file is loaded)"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Loading, overriding, presets


def preset_names() -> list[str]:
    return sorted(
        p.name[:-5] for p in resources.files("sfbd.presets").iterdir() if p.name.endswith(".yaml")
    )


def _describe(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(key: str, value, tp):
    """Check `value` against the annotation `tp`, converting int to float where allowed."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ValueError:
                pass
        raise ValueError(f"config: {key} = {value!r}; expected {' or '.join(map(_describe, args))}")
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"config: {key} = {value!r}; expected a list")
        (item,) = typing.get_args(tp) or (typing.Any,)
        return value if item is typing.Any else [_coerce(key, v, item) for v in value]
    if origin in (dict,) or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config: {key} = {value!r}; expected a mapping")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "2e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ValueError(f"config: {key} = {value!r}; expected {tp.__name__}")
        return value
    raise ValueError(f"config: {key}: unsupported type {tp}")


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from a nested mapping; unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise ValueError(f"config: {prefix.rstrip('.') or 'top level'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"config: unknown key {prefix}{unknown[0]}; allowed in "
            f"{prefix.rstrip('.') or 'top level'}: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, value, tp)
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` strings (values parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. train.lr=2e-4")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"config: {key}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
    return data


def parse_yaml(text: str, what: str) -> dict:
    """A YAML mapping, or a one-line error naming `what` (and the line, where YAML gives one)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{what}, line {mark.line + 1}" if mark is not None else what
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"config: {where}: not valid YAML ({problem})") from None
    if data is None:
        raise ValueError(f"config: {what} is empty; expected a mapping of config keys")
    if not isinstance(data, dict):
        raise ValueError(
            f"config: {what}: the top level is a {type(data).__name__}; "
            f"expected a mapping of config keys (name, iterations, data, train, ...)"
        )
    return data


def renamed_keys(data: dict, note=print) -> dict:
    """Read keys renamed since a config was written as their new names, with a note:
    `data.sigma` is `data.tau` (the observation noise; EDM's sigma is the diffusion level)."""
    section = data.get("data")
    if isinstance(section, dict) and "sigma" in section:
        if "tau" in section:
            raise ValueError(
                "config: data.sigma and data.tau both given; data.sigma is now data.tau"
            )
        section["tau"] = section.pop("sigma")
        note("note: config: data.sigma is now data.tau; read as data.tau")
    return data


def load_config(name_or_path: str, overrides: list[str] | None = None) -> SFBDConfig:
    """A preset name (see `preset_names()`) or a YAML path, then `--set` overrides."""
    path = Path(name_or_path)
    if name_or_path in preset_names():
        text = resources.files("sfbd.presets").joinpath(f"{name_or_path}.yaml").read_text()
    elif path.suffix in (".yaml", ".yml") and path.is_file():
        text = path.read_text()
    elif path.suffix in (".yaml", ".yml"):
        raise FileNotFoundError(f"config: file {path} does not exist")
    else:
        raise ValueError(
            f"config: unknown preset {name_or_path!r}; "
            f"presets: {', '.join(preset_names())}, or a .yaml path"
        )
    data = parse_yaml(text, str(path) if path.suffix else f"preset {name_or_path}")
    data.setdefault("name", path.stem if path.suffix else name_or_path)
    return config_from_dict(data, overrides)


def auto_iterations(data: dict) -> dict:
    """`iterations: auto` is `stop.auto: true` with `iterations` the cap `AUTO_CAP`."""
    if data.get("iterations") == "auto":
        data["iterations"] = AUTO_CAP
        stop = data.setdefault("stop", {})
        if isinstance(stop, dict):
            stop["auto"] = True
    return data


def config_from_dict(data: dict, overrides: list[str] | None = None) -> SFBDConfig:
    """A validated config from a mapping and `key=value` overrides (old key names read as new)."""
    data = renamed_keys(apply_overrides(renamed_keys(data), overrides or []))
    data = auto_iterations(data)
    config = from_dict(SFBDConfig, data)
    if config.train.augment > 0 and config.network.augment_dim == 0:
        # Resolved here, so that the run's config.yaml records the network it builds.
        config.network.augment_dim = AUGMENT_DIM
    config.validate()
    return config


# Keys added since runs were first written whose default is not what a run without them did:
# a config.yaml that lacks one is read with the value given here.
ADDED_KEYS = {
    "data.holdout_fraction": 0.0,
    "data.noisy_dtype": "float32",
    "denoise.out_dtype": "float32",
    "train.ingest": "memory",
}


def _missing_added_keys(data: dict) -> dict:
    missing = {}
    for key, old in ADDED_KEYS.items():
        section, name = key.split(".")
        if name not in (data.get(section) or {}):
            missing[key] = old
    return missing


def config_from_text(text: str, what: str) -> SFBDConfig:
    """A config written back by a run (`config.yaml`), older key names included; keys added
    since it was written take the value the run had (`ADDED_KEYS`)."""
    data = renamed_keys(parse_yaml(text, what))
    for key, old in _missing_added_keys(data).items():
        section, name = key.split(".")
        data.setdefault(section, {})[name] = old
    return from_dict(SFBDConfig, data)


def adopt_added_keys(config: SFBDConfig, run_text: str, what: str, note=print) -> None:
    """Resuming a run whose config.yaml predates a key of `ADDED_KEYS`: the run goes on with
    the value it had (its data and stages were made without the key), whatever `config` says,
    so that the command that started it resumes it."""
    old_data = renamed_keys(parse_yaml(run_text, what), lambda _: None)
    for key, old in _missing_added_keys(old_data).items():
        section, name = key.split(".")
        mine = getattr(config, section)
        if getattr(mine, name) != old:
            setattr(mine, name, old)
            note(f"note: {what} predates {key}; resumed with {key} = {old}")


def dump_config(config: SFBDConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
