"""docker/: the image and the cluster manifests agree with pyproject.toml, the presets and the
job scripts' command lines (files parsed only: no Docker, no Kubernetes, no Ray cluster)."""

import argparse
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from unittest import mock

import pytest
import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SHELL_OPS = set("();<>|&")


def _pin(name: str) -> str:
    """The tested version of `name`: pyproject.toml has ranges, requirements.lock the set."""
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    pins = [ln for ln in lock if re.match(rf"{name}==", ln)]
    assert len(pins) == 1, f"requirements.lock: no exact pin for {name}"
    return pins[0].split("==")[1].strip()


RAY_VERSION = _pin("ray")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of docker/Dockerfile, continuation lines joined."""
    lines = [
        ln for ln in (DOCKER / "Dockerfile").read_text().splitlines() if not ln.startswith("#")
    ]
    text = "\n".join(lines).replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if line.strip():
            instr, _, args = line.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def _one(instr: str) -> str:
    found = [a for i, a in _instructions() if i == instr]
    assert len(found) == 1, f"Dockerfile: expected one {instr}, found {len(found)}"
    return found[0]


def _built_image() -> str:
    """The image name the Dockerfile's header says to build (`docker build ... -t NAME`)."""
    m = re.search(r"docker build .*-t (\S+)", (DOCKER / "Dockerfile").read_text())
    assert m, "Dockerfile: no `docker build ... -t IMAGE` line documents the image name"
    return m.group(1)


def _yaml_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DOCKER / name).read_text()) if d]


def _rayjob() -> dict:
    jobs = [d for d in _yaml_docs("rayjob.yaml") if d.get("kind") == "RayJob"]
    assert len(jobs) == 1
    return jobs[0]


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _python_commands(text: str) -> list[tuple[str, list[str]]]:
    """(script, args) of every `python SCRIPT.py ARGS` in shell text."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        if "python" not in line or ".py" not in line:
            continue
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        tokens = list(lex)
        for i, tok in enumerate(tokens[:-1]):
            if tok in ("bash", "sh") and tokens[i + 1] == "-c" and i + 2 < len(tokens):
                out += _python_commands(tokens[i + 2])
            if tok in ("python", "python3") and tokens[i + 1].endswith(".py"):
                args = []
                for t in tokens[i + 2 :]:
                    if set(t) <= SHELL_OPS:
                        break
                    args.append(t)
                out.append((tokens[i + 1], args))
    return out


def _commands(name: str) -> list[tuple[str, list[str]]]:
    """Commands in a manifest's values (entrypoint, setup commands) and in its comments."""
    text = (DOCKER / name).read_text()
    comments = "\n".join(ln.strip()[1:] for ln in text.splitlines() if ln.strip().startswith("#"))
    found = _python_commands(comments)
    for doc in _yaml_docs(name):
        for s in _strings(doc):
            found += _python_commands(s)
    return found


def _parse(script: str, args: list[str]):
    """The job's own argparse result for `args`; abbreviated or unknown flags fail."""
    spy_target = argparse.ArgumentParser.parse_args

    def strict(self, argv=None, namespace=None):
        self.allow_abbrev = False
        return spy_target(self, argv, namespace)

    from sfbd.cli import build_parser

    shim = (ROOT / "jobs" / Path(script).name).read_text()
    command = re.search(r'main\(\["([a-z-]+)", \*sys\.argv\[1:\]\]\)', shim)
    assert command, f"{script} is not a shim of the sfbd command"
    with mock.patch.object(argparse.ArgumentParser, "parse_args", strict):
        try:
            ns = build_parser().parse_args([command.group(1), *args])
        except SystemExit:
            pytest.fail(f"{script} rejects the arguments {args}")
    return ns


def _repo_script(script: str) -> Path:
    """A command's script as a repository path (absolute paths are inside the image)."""
    workdir = _one("WORKDIR")
    rel = Path(script).relative_to(workdir) if script.startswith("/") else Path(script)
    assert rel.parts[0] == "jobs", f"{script}: entry points live in jobs/"
    assert (ROOT / rel).is_file(), f"{script}: no such file in the repository"
    return rel


def _shared(p: str | None, mount: str) -> bool:
    """Every node sees `p`: a path under the shared mount, or a URI (s3://...)."""
    return bool(p) and (p.startswith(mount + "/") or bool(re.match(r"[a-z][a-z0-9+.-]*://", p)))


def _check_command(script: str, args: list[str]):
    """A command runs an existing job with flags it accepts and, for sfbd.py, a valid config."""
    from sfbd.config import load_config

    rel = _repo_script(script)
    ns = _parse(str(rel), args)
    if rel.stem == "sfbd":
        presets = {p.stem for p in (ROOT / "sfbd" / "presets").glob("*.yaml")}
        assert ns.config in presets, f"--config {ns.config} is not a preset in sfbd/presets/"
        load_config(ns.config, ns.set)  # raises on a bad --set key or value
    elif rel.stem == "prepare_data":
        from sfbd.data.prepare import DataConfig

        DataConfig(ns.dataset, ns.clean_fraction, ns.tau, ns.seed).validate()
    return rel.stem, ns


def _check_commands(name: str) -> dict:
    """Check every job command of docker/NAME; returns {script stem: [parsed args]}."""
    commands = _commands(name)
    assert commands, f"{name}: no `python jobs/...` command found"
    parsed = {}
    for script, args in commands:
        stem, ns = _check_command(script, args)
        parsed.setdefault(stem, []).append(ns)
    return parsed


# The image ------------------------------------------------------------------------------------


def test_base_image_is_the_ray_gpu_image_of_the_pinned_ray_and_a_supported_python():
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-(gpu|cu\d+)", _one("FROM"))
    assert m, f"FROM {_one('FROM')}: expected rayproject/ray:X.Y.Z-py3NN-gpu"
    assert m.group(1) == RAY_VERSION
    assert f"3.{m.group(2)}" in SpecifierSet(PROJECT["requires-python"])


def test_dockerfile_installs_the_project_with_the_pins_of_pyproject(tmp_path):
    copied = [
        src
        for instr, args in _instructions()
        if instr == "COPY"
        for src in args.split()[:-1]
        if not src.startswith("--")
    ]
    for src in copied:
        assert (ROOT / src).exists(), f"Dockerfile: COPY {src}: not in the repository"
    assert {"pyproject.toml", "sfbd", "jobs"} <= set(copied)
    assert PROJECT["readme"] in copied, "the build reads the readme named in pyproject.toml"

    runs = " && ".join(a for i, a in _instructions() if i == "RUN")
    assert "==" not in runs, "versions come from requirements.lock, not from the Dockerfile"
    assert "requirements.lock" in copied
    assert re.search(r"pip install .*-c requirements\.lock .*-r ", runs), "lock not used"
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", runs), "Dockerfile does not install ."
    if not re.search(r"pip install (--no-cache-dir )?\.(\s|$)", runs):
        # `--no-deps .`: the dependencies must come from a requirements file made from
        # pyproject.toml; run that step here and compare.
        m = re.search(r"python -c (\"[^\"]*\"|'[^']*') > (\S+)", runs)
        assert m, "Dockerfile: --no-deps install without requirements read from pyproject"
        code, req = shlex.split(m.group(1))[0], m.group(2)
        assert re.search(rf"pip install .*-r {re.escape(req)}", runs)
        (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout
        assert out.splitlines() == PROJECT["dependencies"]


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = {
        ln.strip().strip("/").removeprefix("**/")
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    assert {".venv", "runs", "data", ".git", ".raybundle", "__pycache__"} <= ignored
    assert not ignored & {"sfbd", "jobs", "pyproject.toml", "README.md"}


def test_default_command_is_a_valid_job():
    python, script, *args = json.loads(_one("CMD"))
    assert python == "python"
    _check_command(script, args)


# Manifests ------------------------------------------------------------------------------------


def test_manifests_use_the_image_built_from_the_dockerfile():
    image = _built_image()
    name, _, tag = image.rpartition(":")
    assert tag == PROJECT["version"] and name.split("/")[-1] == PROJECT["name"], image
    spec = _rayjob()["spec"]["rayClusterSpec"]
    templates = [spec["headGroupSpec"]["template"]] + [
        g["template"] for g in spec["workerGroupSpecs"]
    ]
    images = {c["image"] for t in templates for c in t["spec"]["containers"]}
    cluster = _yaml_docs("cluster.yaml")[0]["docker"]
    images |= {cluster[k] for k in ("image", "head_image", "worker_image") if k in cluster}
    assert images == {image}


def test_rayjob_runs_a_valid_gpu_job_with_shared_storage():
    from sfbd.config import load_config
    from sfbd.run import check_resources

    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    spec = job["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == RAY_VERSION

    claims = {
        d["metadata"]["name"]: d
        for d in _yaml_docs("rayjob.yaml")
        if d.get("kind") == "PersistentVolumeClaim"
    }
    groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    mounts = set()
    for group in groups:
        pod = group["template"]["spec"]
        vols = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        shared = {
            (vols[m["name"]], m["mountPath"])
            for c in pod["containers"]
            for m in c.get("volumeMounts", [])
            if m["name"] in vols
        }
        assert shared, f"{group.get('groupName', 'head')}: no shared volume mounted"
        mounts |= shared
    assert len(mounts) == 1, f"head and workers must mount one claim at one path: {mounts}"
    ((claim, path),) = mounts
    assert claim in claims and claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"]

    gpus = cpus = 0.0
    for group in spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert float(limits.get("nvidia.com/gpu", 0)) >= 1, f"{group['groupName']}: no GPU"
        gpus += group["replicas"] * float(limits["nvidia.com/gpu"])
        cpus += group["replicas"] * float(
            group.get("rayStartParams", {}).get("num-cpus", limits["cpu"])
        )
    cpus += float(spec["headGroupSpec"].get("rayStartParams", {}).get("num-cpus", 0))

    entrypoint = job["spec"]["entrypoint"]
    lex = shlex.shlex(entrypoint, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    ops = [t for t in lex if set(t) <= SHELL_OPS]
    # KubeRay runs `ray job submit ... -- ENTRYPOINT ; ...` in a shell: an unquoted operator
    # would split the job, and its tail would run in the submitter pod instead of on Ray.
    assert not ops, f"entrypoint: quote the shell operators {ops} (bash -c '...')"
    commands = _python_commands(entrypoint)
    assert any(Path(s).name == "sfbd.py" for s, _ in commands), "entrypoint runs no sfbd.py"
    parsed = _check_commands("rayjob.yaml")
    for ns in parsed["sfbd"]:
        for p in (ns.run_dir, ns.data):
            assert _shared(p, path), f"{p}: not on the shared volume {path}"
        check_resources(load_config(ns.config, ns.set), {"CPU": cpus, "GPU": gpus})
    _check_prepared_data_matches(parsed, path)


def test_cluster_launcher_config_is_valid_and_shares_storage():
    from sfbd.config import load_config
    from sfbd.run import check_resources

    config = _yaml_docs("cluster.yaml")[0]
    spec = importlib.util.find_spec("ray")
    if spec is not None:  # the launcher's own schema, shipped with ray
        import jsonschema

        schema = Path(spec.origin).parent / "autoscaler" / "ray-schema.json"
        jsonschema.validate(config, json.loads(schema.read_text()))

    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = [t for k, t in types.items() if k != config["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 for t in workers), "no GPU worker type"
    gpus = sum(t.get("min_workers", 0) * t["resources"].get("GPU", 0) for t in workers)
    cpus = head["resources"].get("CPU", 0) + sum(
        t.get("min_workers", 0) * t["resources"].get("CPU", 0) for t in workers
    )

    volumes = [o.split()[1] for o in config["docker"]["run_options"] if o.startswith("--volume")]
    shared = [v.split(":")[1] for v in volumes if v.split(":")[0] == v.split(":")[1]]
    assert len(shared) == 1, "one host directory, at the same path in every container"
    path = shared[0]
    assert any(f" {path}" in c and "mount" in c for c in config["initialization_commands"])

    parsed = _check_commands("cluster.yaml")
    assert parsed.get("sfbd"), "cluster.yaml documents no `python jobs/sfbd.py` submission"
    for ns in parsed["sfbd"]:
        for p in (ns.run_dir, ns.data):
            assert _shared(p, path), f"{p}: not on the shared storage {path}"
        check_resources(load_config(ns.config, ns.set), {"CPU": cpus, "GPU": gpus})
    _check_prepared_data_matches(parsed, path)


def _check_prepared_data_matches(parsed: dict, shared: str) -> None:
    """Data prepared in a manifest is what its runs read, with the settings of their config."""
    from sfbd.config import load_config

    prepared = {ns.out: ns for ns in parsed.get("prepare_data", [])}
    for ns in prepared.values():
        for p in (ns.out, ns.root):
            assert _shared(p, shared), f"{p}: not on the shared storage {shared}"
    for ns in parsed["sfbd"]:
        if prepared:
            assert ns.data in prepared, f"--data {ns.data} is not the prepared {list(prepared)}"
            data, want = prepared[ns.data], load_config(ns.config, ns.set).data
            for key in ("dataset", "clean_fraction", "tau", "seed"):
                assert getattr(data, key) == getattr(want, key), f"prepared data: {key} differs"
