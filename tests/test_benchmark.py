"""`sfbd benchmark` at a tiny CPU size on the session's Ray cluster: the counts, rates and
FLOP figures it reports, and the analytic FLOP counts it relies on (sfbd.studies.benchmark)."""

import json
import math

import pytest
import torch
from torch import nn

from sfbd.cli import main
from sfbd.diffusion.networks import PRESETS, NetworkConfig
from sfbd.runfiles import COMPLETE, is_complete
from sfbd.studies import benchmark
from sfbd.studies.scale_inputs import network_cost

NUM, BATCH, STEPS, TRAIN_STEPS, TRAIN_BATCH = 96, 24, 3, 5, 16


def test_flop_counts_match_analytic_counts():
    # One Linear (bias adds are not counted): 2 * batch * in * out.
    assert benchmark.count_forward_flops(nn.Linear(5, 7), torch.zeros(3, 5)) == 2 * 3 * 5 * 7
    # One 3x3 convolution, 'same' padding: 2 * batch * H * W * cout * cin * 3 * 3.
    conv = nn.Conv2d(4, 6, 3, padding=1)
    assert (
        benchmark.count_forward_flops(conv, torch.zeros(2, 4, 10, 10))
        == 2 * 2 * 10 * 10 * 6 * 4 * 9
    )
    # The whole mlp denoiser: input layer (dim + 64 embedding -> 128), 3 residual blocks of
    # two 128 x 128 layers, output layer 128 -> dim; the sinusoidal embedding is no matmul.
    dim, h, b = 2, 128, 7
    expected = 2 * b * ((dim + 64) * h + 3 * 2 * h * h + h * dim)
    assert benchmark.denoiser_flops(NetworkConfig(preset="mlp", channels=dim), b) == expected
    # FLOPs of a UNet forward grow exactly linearly with the batch.
    tiny = NetworkConfig(preset="tiny", channels=1, resolution=16)
    assert benchmark.denoiser_flops(tiny, 6) == 3 * benchmark.denoiser_flops(tiny, 2)


def test_peak_table():
    assert benchmark.bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert benchmark.bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert benchmark.bf16_peak_tflops("NVIDIA H200") == 989.0
    assert benchmark.bf16_peak_tflops("NVIDIA L40S") == 362.0
    assert benchmark.bf16_peak_tflops("NVIDIA L4") == 121.0
    assert benchmark.bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert benchmark.bf16_peak_tflops("Tesla T4") is None


def test_bad_sizes_fail_before_work(ray_cluster, tmp_path, capsys):
    out = tmp_path / "b.json"
    args = ["benchmark", "--address", ray_cluster, "--out", str(out)]
    args += ["--work-dir", str(tmp_path / "w")]
    assert main(args + ["--num-images", "40", "--batch-size", "32"]) == 2
    assert main(args + ["--train-steps", "1"]) == 2
    assert main(args + ["--preset", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: --") for line in err), err
    # The observation noise is tau: the old flag is refused, naming the new one.
    with pytest.raises(SystemExit) as exc:
        main(args + ["--sigma", "0.3"])
    assert exc.value.code == 2 and "--tau" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "w").exists()


def test_help_lists_every_preset(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no line breaks inside names
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in PRESETS), text


def _finite_positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_benchmark_on_cpu(ray_cluster, tmp_path, capsys):
    out, work = tmp_path / "bench.json", tmp_path / "work"
    args = ["benchmark", "--address", ray_cluster, "--out", str(out), "--work-dir", str(work)]
    args += ["--num-images", str(NUM), "--batch-size", str(BATCH), "--steps", str(STEPS)]
    args += ["--train-steps", str(TRAIN_STEPS), "--train-batch-size", str(TRAIN_BATCH)]
    # The scale plan from the rates this run measures (tests/test_scale_plan.py: the rest).
    args += ["--plan", "--plan-configs", "fashion-mnist-cpu@1x16", "--plan-sizes", "1k"]
    args += ["--plan-gpus", "1,2"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "Ray Data stage" in table and "Ray Train" in table and "targets:" in table
    assert "[measured on cpu " in table and "scale plan:" in table

    r = json.loads(out.read_text())
    for key in ("date", "device", "versions", "preset", "network", "batch_size", "flops"):
        assert key in r
    assert {"denoise", "train", "targets", "nfe_per_image"} <= set(r)
    assert r["device"]["type"] == "cpu" and r["device"]["peak_bf16_tflops"] is None
    assert r["preset"] == "tiny" and r["batch_size"] == BATCH
    assert r["versions"]["torch"] == torch.__version__
    assert r["parameters"] == r["network"]["parameters"] > 0

    nfe = 2 * STEPS - 1
    assert r["nfe_per_image"] == nfe
    net = NetworkConfig(preset="tiny", channels=1, resolution=16)
    per_forward = benchmark.denoiser_flops(net, BATCH)
    assert r["flops"]["per_forward"] == per_forward
    assert r["flops"]["per_image_evaluation"] == pytest.approx(per_forward / BATCH)

    d = r["denoise"]
    assert d["plain_compiled"] is None
    for path in ("plain", "ray"):
        row = d[path]
        assert row["images"] == NUM, path
        # Counted at the denoiser's call site, not computed: every image took 2n-1 calls.
        assert row["evaluations"] == NUM * nfe, path
        assert (
            0 < row["timed_images"] < NUM and row["timed_evaluations"] == row["timed_images"] * nfe
        )
        for key in ("images_per_s", "evaluations_per_s", "tflops", "seconds"):
            assert _finite_positive(row[key]), (path, key, row[key])
        assert row["evaluations_per_s"] == pytest.approx(row["images_per_s"] * nfe)
        tflops = r["flops"]["per_image_evaluation"] * row["evaluations_per_s"] / 1e12
        assert row["tflops"] == pytest.approx(tflops)
        assert row["fraction_of_peak"] is None
        assert 0 < row["busy_fraction"] <= 1 + 1e-9, path
    assert d["plain"]["busy_fraction"] > 0.9  # the plain loop's batches run back to back
    assert d["plain"]["timed_images"] == NUM - BATCH
    assert d["ray"]["stage_count"] == NUM
    # The stage's wall time includes actor start-up, which the steady-state window leaves out.
    assert d["ray"]["stage_seconds"] > d["ray"]["seconds"]
    assert d["ratio_ray_over_plain"] == pytest.approx(
        d["ray"]["images_per_s"] / d["plain"]["images_per_s"]
    )
    # The Ray path went through the real stage: published output with every id once.
    assert is_complete(work / "denoised")
    assert json.loads((work / "denoised" / COMPLETE).read_text())["count"] == NUM

    t = r["train"]
    for path in ("plain", "ray"):
        row = t[path]
        assert row["images"] == TRAIN_STEPS * TRAIN_BATCH, path
        assert row["steps"] == TRAIN_STEPS, path
        assert row["timed_images"] == (TRAIN_STEPS - 1) * TRAIN_BATCH, path
        assert _finite_positive(row["images_per_s"]), path
        assert math.isfinite(row["loss"]), path
    assert t["ratio_ray_over_plain"] == pytest.approx(
        t["ray"]["images_per_s"] / t["plain"]["images_per_s"]
    )

    targets = r["targets"]
    assert set(targets) == {"ray_data_ratio", "ray_train_ratio", "compiled_ddpmpp_peak"}
    for name, ratio in (("ray_data_ratio", d), ("ray_train_ratio", t)):
        expected = "pass" if ratio["ratio_ray_over_plain"] >= 0.95 else "miss"
        assert targets[name]["status"] == expected
        assert targets[name]["target"] == 0.95
    assert targets["compiled_ddpmpp_peak"]["status"] == "not measured"

    # The plan took its per-device rates from this run: the Ray Data stage's TFLOP/s and Ray
    # Train's images/s times the counted training FLOPs per image of the same network.
    plan = r["plan"]
    assert plan["rates"]["denoise_tflops"] == d["ray"]["tflops"]
    train_flops = network_cost(net).train_flops
    assert plan["rates"]["train_tflops"] == pytest.approx(
        t["ray"]["images_per_s"] * train_flops / 1e12
    )
    (w,) = plan["workloads"]
    assert w["train_flops_per_image"] == train_flops  # the same tiny 1x16 px network
    one, two = plan["rows"]
    assert (one["noisy"], one["gpus"], two["gpus"]) == (1000, 1, 2)
    # One device: the refit takes its kimg at exactly the measured Ray Train images/s.
    refit_s = w["refit_kimg"] * 1000 / t["ray"]["images_per_s"]
    assert one["refit"]["compute_s"] == pytest.approx(refit_s)
    assert two["refit"]["compute_s"] == pytest.approx(refit_s / (2 * 0.9))


def test_ingest_benchmark_alternates_the_modes(ray_cluster, tmp_path, capsys):
    """`sfbd benchmark --ingest` at a tiny size, training in local mode: one run of each mode
    on the same sets, and the ratio of their rates."""
    out = tmp_path / "ingest.json"
    args = ["benchmark", "--ingest", "--address", ray_cluster, "--out", str(out)]
    args += ["--work-dir", str(tmp_path / "w"), "--ingest-workers", "0"]
    assert main(args + ["--ingest-rounds", "0"]) == 2
    assert "--ingest-rounds >= 1" in capsys.readouterr().err
    assert main(args + ["--plan"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --plan: not with --ingest (the plan needs the stage benchmark)"
    )
    assert not out.exists()
    assert (
        main(args + ["--num-images", "200", "--ingest-kimg", "0.128", "--ingest-rounds", "1"]) == 0
    )
    result = json.loads(out.read_text())
    assert [r["mode"] for r in result["runs"]] == ["memory", "stream"]
    assert all(r["set_sizes"] == [8, 200] for r in result["runs"])
    rate = result["images_per_s"]
    assert all(_finite_positive(r["images_per_s"]) for r in result["runs"])
    assert result["ratio_stream_over_memory"] == pytest.approx(rate["stream"] / rate["memory"])
    assert "stream / memory =" in capsys.readouterr().out
