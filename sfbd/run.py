"""The one driver: `fit` runs SFBD end to end for a config and a run directory. The CLI
(`sfbd run`, `jobs/sfbd.py`), the Python API (`sfbd.fit`), sweep trials and the experiment
table all start runs through it; a rerun on the same run directory resumes.

    import sfbd
    summary = sfbd.fit("toy2d", run_dir="runs/x", overrides=["iterations=2"])
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable, Sequence

from sfbd.clusterwatch import ClusterWatch, cluster_addresses
from sfbd.config import BASELINE_KINDS, SFBDConfig, config_from_dict, load_config
from sfbd.data.store import MANIFEST, read_manifest, verify_split
from sfbd.defaults import (
    BARE_PRESETS,
    STORAGE_ENV,
    default_preset,
    default_run_dir,
    working_dir_copy,
)
from sfbd.lease import hold_lease
from sfbd.rundir import RunDir
from sfbd.storage import Location, Where

BASELINES = BASELINE_KINDS


class StageFailed(RuntimeError):
    """A stage of a run failed; the run directory holds everything finished before it."""

    def __init__(self, stage: str | None, reason: str):
        super().__init__(f"stage {stage} failed: {reason}")
        self.stage, self.reason = stage, reason

    def __reduce__(self):  # Ray pickles it back from a failed Tune trial
        return StageFailed, (self.stage, self.reason)

    def line(self) -> str:
        """What the user reads: one line, with how to resume."""
        return f"error: {self} (rerun the same command to resume)"


def log(msg: str) -> None:
    print(f"[sfbd] {msg}", flush=True)


def check_resources(config: SFBDConfig, resources: dict) -> None:
    """Fail before any work when the cluster cannot hold what the config asks for."""
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    t = config.train
    if t.use_gpu and gpus < max(t.num_workers, 1):
        raise ValueError(
            f"config: train.use_gpu with train.num_workers = {t.num_workers} needs "
            f"{max(t.num_workers, 1)} GPU(s); the cluster has {gpus:g}"
        )
    if t.num_workers * t.cpus_per_worker > cpus:
        raise ValueError(
            f"config: train.num_workers * train.cpus_per_worker = "
            f"{t.num_workers * t.cpus_per_worker:g} CPUs; the cluster has {cpus:g}"
        )
    if t.ingest == "stream":
        from sfbd.stages.ingest import check_stream_room

        check_stream_room(t, cpus, "as configured")
    if config.denoise.cpus_per_actor > cpus:
        raise ValueError(
            f"config: denoise.cpus_per_actor = {config.denoise.cpus_per_actor:g}; "
            f"the cluster has {cpus:g} CPUs"
        )


def resolve(
    config: SFBDConfig | str,
    overrides: Sequence[str] = (),
    run_dir: Where | None = None,
    data: Where | None = None,
    baselines: Sequence[str] | None = None,
    *,
    quiet: bool = False,
) -> tuple[SFBDConfig, RunDir, Location | None]:
    """Everything that can be checked before Ray starts: the config (a preset name, a YAML
    path or an `SFBDConfig`, then `overrides`), the run directory (writable; default:
    `sfbd.defaults.default_run_dir`, logged unless `quiet`) and prepared data. One-line
    `ValueError`/`OSError` otherwise."""
    if isinstance(config, str):
        config = load_config(config, list(overrides))
    else:
        config = config_from_dict(config.to_dict(), list(overrides))
    if baselines is not None:  # given: instead of the config's
        unknown = sorted(set(baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"baselines: unknown {unknown}; allowed: {', '.join(BASELINES)}")
        config.baselines = list(dict.fromkeys(baselines))
    # Resolved here (made absolute): Ray workers run in another working directory.
    if run_dir is None:
        default = default_run_dir(config.name)
        run = RunDir(default.where)
        if not quiet:
            log(f"run directory {run} ({default.why})")
    else:
        run = RunDir(run_dir)
        copy = working_dir_copy(os.getcwd())
        local = run.root.local
        if not quiet and copy is not None and local is not None and local.is_relative_to(copy):
            log(
                f"warning: run-dir {run} is inside this Ray job's temporary copy of its "
                f"working directory, which Ray deletes later; give an absolute path or a URI"
            )
    run.root.check_writable("run-dir")
    if config.train.init:
        init = Location.of(config.train.init)
        if init.local is not None:
            config.train.init = str(init.local.resolve())
        if not init.is_file():
            raise FileNotFoundError(f"config: train.init = {init} does not exist")
        check_init(config, skip=DATA_SHAPED)  # the rest once the data gave the shape
        check_init_state(config)
    data_loc = Location.of(data) if data is not None else None
    if data_loc is not None and not (data_loc / MANIFEST).is_file():
        raise FileNotFoundError(
            f"data: {data_loc} is not a prepared data directory "
            f"(no {MANIFEST}); run `sfbd prepare` first"
        )
    return config, run, data_loc


def prepare_run_dir(config: SFBDConfig, run: RunDir, data: Location | None) -> Location:
    """Prepare the data (unless given), resolve the network's shape from it, and write (or
    check) the run's config. Returns the data's location."""
    from sfbd.config import adopt_added_keys
    from sfbd.metrics.classifier import ensure_classifier, is_classifier_spec
    from sfbd.stages.prepare_images import prepare_data

    if run.config_file.is_file():
        adopt_added_keys(config, run.config_file.read_text(), str(run.config_file), note=log)
    if data is None:
        data = prepare_data(config.data, run.data, log=log)
    if is_classifier_spec(config.eval.feature_net):  # trained here, before the stages, once
        ensure_classifier(config.eval.feature_net, config.data.root, log=log)
    manifest = read_manifest(data)
    verify_split(data)
    if config.eval.reference in ("test", "train") and manifest["source"] not in (
        "cifar10",
        "fashion-mnist",
        "mnist",
    ):
        raise ValueError(
            f"config: eval.reference = {config.eval.reference}, but the data "
            f"({manifest['source']}) has no {config.eval.reference} split; use clean or npz:PATH"
        )
    shape = manifest["item_shape"]
    config.network.channels = shape[0]
    if len(shape) == 3:
        if shape[1] != shape[2]:
            raise ValueError(f"data: {data} holds {shape[1]}x{shape[2]} images; need square ones")
        config.network.resolution = shape[1]
    elif config.network.preset != "mlp":
        raise ValueError(
            f"config: network.preset = {config.network.preset!r} cannot model "
            f"vectors of shape {shape}; use mlp"
        )
    config.network.validate()
    if config.train.init:
        check_init(config)
    if run.config_file.is_file():
        # Compared as configs, not text: keys added (or renamed) since the run began.
        try:  # the comparison models trained after the run are not part of it
            same = dataclasses.replace(run.read_config(), baselines=config.baselines) == config
        except ValueError:
            same = False
        if not same:
            raise ValueError(
                f"run-dir: {run} holds a run with a different config.yaml; "
                f"use another --run-dir (or the same settings to resume)"
            )
    run.write_config(config)
    return data


DATA_SHAPED = ("channels", "resolution")  # network keys that prepare_run_dir sets from the data


def check_init(config: SFBDConfig, skip: Sequence[str] = ()) -> None:
    """`train.init` must be an sfbd checkpoint of the network this run builds: one line naming
    the key and the first field that differs (but those in `skip`)."""
    from dataclasses import asdict

    local = Location.of(config.train.init).local
    stamp = local.stat().st_mtime_ns if local is not None else None  # a rewritten file: read again
    mine, theirs = asdict(config.network), asdict(_network_of(config.train.init, stamp))
    for key in mine:
        if key not in skip and mine[key] != theirs.get(key):
            raise ValueError(
                f"config: train.init = {config.train.init} holds a network with "
                f"network.{key} = {theirs.get(key)!r}; this run builds {mine[key]!r}"
            )


def check_init_state(config: SFBDConfig) -> None:
    """`train.refit_start: continue` after an adopted `train.init` (pretrain_kimg 0) carries
    on the train state behind it, which its run keeps in `train/<stage>/`: it must be there."""
    from sfbd.stages.refit import init_train_storage, latest_state_folder

    t = config.train
    if t.refit_start != "continue" or t.pretrain_kimg != 0:
        return
    storage = init_train_storage(t.init)
    if latest_state_folder(storage) is None:
        where = storage if storage is not None else "a run's checkpoints/iter_KKK.pt"
        raise ValueError(
            f"config: train.refit_start = continue with train.pretrain_kimg = 0 needs the "
            f"train state behind train.init = {t.init} (in {where}); none found: use "
            f"refit_start ema, or train.init from an sfbd run directory"
        )


@functools.lru_cache(maxsize=2)
def _network_of(checkpoint: str, stamp: int | None):
    """The network config of an sfbd checkpoint, read once per process (checked before and
    after the data gave the shape; a DDPM++ checkpoint is hundreds of MB)."""
    from sfbd.runfiles import load_denoiser_at

    try:
        return load_denoiser_at(checkpoint)[1]
    except (ValueError, OSError) as exc:
        raise ValueError(f"config: train.init: {exc}") from exc


def init_ray(address: str | None = None):
    """Connect to `address` (or RAY_ADDRESS), or start a local cluster; a session that is
    already connected (a notebook, a Tune trial) is kept."""
    import ray

    if ray.is_initialized():
        return None
    return ray.init(address=address, namespace="sfbd")


def warn_if_node_local(run: RunDir) -> None:
    """A default run directory on this node's disk is wrong on a multi-node cluster: the
    stages on other nodes write into it too. Say so (the run goes on: one node may be all
    that does the work)."""
    import ray

    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if run.root.local is not None and nodes > 1:
        log(
            f"warning: run directory {run} is on this node's disk and the cluster has {nodes} "
            f"nodes; set {STORAGE_ENV} or --run-dir to storage that every node sees"
        )


def watch_cluster(run: RunDir, lease) -> ClusterWatch:
    """In a driver process, end the run within seconds of losing the cluster (head, GCS or
    this node's raylet), with the CLI's one line for a failed stage, instead of Ray's 60 s
    reconnect wait and its own messages. The run directory stays resumable: every stage
    writes its outputs atomically, and the lease is released for the rerun."""
    import ray

    def lost(reason: str) -> None:
        stage = run.read_state().get("current")
        print(StageFailed(stage, reason).line(), file=sys.stderr, flush=True)
        lease.release()
        os._exit(1)  # Ray's client would otherwise hang in its reconnect loop

    if ray._private.worker.global_worker.mode != ray.SCRIPT_MODE:
        return ClusterWatch({}, lost)  # a Tune trial or task: Ray ends it with its cluster
    return ClusterWatch(cluster_addresses(), lost).start()


def fit(
    config: SFBDConfig | str | None = None,
    run_dir: Where | None = None,
    *,
    overrides: Sequence[str] = (),
    data: Where | None = None,
    address: str | None = None,
    baselines: Sequence[str] | None = None,
    on_metrics: Callable[[dict], None] | None = None,
) -> dict:
    """Run SFBD (Lu, Wu & Yu 2025, Algorithm 1) to completion, or resume it.

    `config`: a preset name, a YAML path or an `SFBDConfig`; None picks `fashion-mnist-gpu`
    when the cluster has GPUs, else `fashion-mnist-cpu` (once Ray is up; `overrides` are
    checked against both before). `overrides`: `key=value` strings. `run_dir` defaults to
    `sfbd.defaults.default_run_dir`. `data`: prepared data (default: prepared into the run
    directory). `baselines`: comparison models trained after the run (`noisy`,
    `clean-only`, `all-clean`); None: the config's `baselines`. `on_metrics` is called
    with every `metrics.jsonl` row as it lands (rows of stages finished before a resume too).

    Returns `{"run_dir", "state", "metrics", "best", "baselines"}`; `best` is the iteration
    with the lowest `noisy_distance` (`{"iteration", "noisy_distance", "checkpoint"}`, None
    without a holdout split), the model to keep when late iterations drift back. Raises
    `ValueError`/`OSError` (one line, before any work) for bad input, `sfbd.lease.LeaseHeld`
    (a `ValueError`, before any work) while another run holds the run directory, and
    `StageFailed` when a stage fails.
    The run holds the directory's lease from before Ray starts to the end of its baselines.
    """
    import ray

    ctx = None
    if config is None:
        # Bad input fails here, whichever preset the cluster picks, before Ray starts.
        for name in BARE_PRESETS:
            resolve(name, overrides, run_dir, data, baselines, quiet=True)
        ctx = init_ray(address)
        config, why = default_preset(ray.cluster_resources())
        log(f"config {config}: {why} (no --config given)")
    config, run, data_loc = resolve(config, overrides, run_dir, data, baselines)
    with hold_lease(run, log=log) as lease:
        ctx = init_ray(address) or ctx
        check_resources(config, ray.cluster_resources())
        if run_dir is None and not os.environ.get(STORAGE_ENV):
            warn_if_node_local(run)
        data_loc = prepare_run_dir(config, run, data_loc)

        from sfbd import orchestrator

        t0 = time.time()
        dashboard = getattr(ctx, "dashboard_url", None) if ctx is not None else None
        log(
            f"run {run} ({config.name}): "
            + (
                f"at most {config.iterations} iterations (iterations: auto)"
                if config.stop.auto
                else f"{config.iterations} iterations"
            )
            + (f"; dashboard: {dashboard}" if dashboard else "")
        )
        actor = orchestrator.start(run.root, data_loc)
        ref = actor.run.remote()
        reported = 0
        watch = watch_cluster(run, lease)
        try:
            while True:
                done, _ = ray.wait([ref], timeout=1.0)
                if lease.lost:  # another run took the directory over: stop writing to it
                    ray.kill(actor)
                    raise StageFailed(run.read_state().get("current"), lease.lost)
                if on_metrics is not None:
                    rows = run.read_metrics()
                    for row in rows[reported:]:
                        on_metrics(row)
                    reported = len(rows)
                if done:
                    summary = ray.get(ref)
                    break
        except ray.exceptions.RayError as exc:
            watch.check_now()  # a lost cluster ends the process here, in the watch's words
            lines = [line for line in str(exc).splitlines() if line.strip()]
            reason = lines[-1] if lines else repr(exc)
            raise StageFailed(run.read_state().get("current"), reason) from exc
        finally:
            watch.stop()
        log(f"finished in {time.time() - t0:.1f}s; run directory {run}")
        summary["baselines"] = {}
        for kind in config.baselines:
            from sfbd.baselines import run_baseline

            summary["baselines"][kind] = run_baseline(kind, run.root, data_loc, config)
        return summary
