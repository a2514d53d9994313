"""The scale plan (`sfbd benchmark --plan`): its arithmetic on exact cases, the FLOP counts it
uses, and the `--plan-*` flags (no Ray: the measured path rides on tests/test_benchmark.py)."""

import dataclasses

import pytest

from sfbd.cli import main
from sfbd.diffusion.networks import NetworkConfig
from sfbd.studies import benchmark
from sfbd.studies.scale_inputs import (
    anchor_rates,
    load_plan_config,
    network_cost,
    parse_count,
    parse_counts,
    workload_from_config,
)
from sfbd.studies.scale_plan import (
    Cluster,
    Rates,
    Workload,
    denoise_time,
    evaluate_time,
    fmt_hours,
    plan_row,
    plan_rows,
    pretrain_time,
    refit_time,
    short_count,
    storage_bound_beyond,
)

GFLOP = 40.8e9
# A DDPM++-like workload at 3x32x32 with round numbers: 15 NFE, training 3x the forward.
W = Workload(
    name="w@32",
    network="ddpmpp-cifar10",
    channels=3,
    resolution=32,
    parameters=53_000_000,
    flops_per_evaluation=GFLOP,
    train_flops_per_image=3 * GFLOP,
    denoise_steps=8,
    denoise_nfe=15,
    eval_steps=18,
    eval_nfe=35,
    eval_samples=50_000,
    iterations=5,
    pretrain_kimg=50_000,
    refit_kimg=10_000,
    batch_size=512,
    clean_fraction=0.04,
)
R = Rates(denoise_tflops=340.0, train_tflops=153.0)


def test_denoise_hours_exact_and_storage_flips_the_bound():
    # 1M images x 15 evaluations x 40.8 GFLOP = 6.12e17 FLOP over 10 GPUs at 340 TFLOP/s each
    # (3.4e15 FLOP/s) = 180 s = 0.05 h.
    t = denoise_time(W, 1_000_000, Cluster(10, storage_gbps=10.0), R)
    assert t.compute_s == pytest.approx(180.0, rel=1e-12)
    assert t.hours == pytest.approx(0.05, rel=1e-12) and t.bound == "compute"
    # Read noisy + write denoised, float32: 2 x 1M x 3 x 32 x 32 x 4 bytes = 24.576 GB.
    assert t.bytes == 2 * 1_000_000 * 3072 * 4
    assert t.storage_s == pytest.approx(2.4576, rel=1e-12)
    # At 0.1 GB/s the same pass takes 245.76 s of storage: storage now bounds it.
    slow = denoise_time(W, 1_000_000, Cluster(10, storage_gbps=0.1), R)
    assert slow.bound == "storage" and slow.seconds == pytest.approx(245.76, rel=1e-12)
    # Denoising scales linearly: 20 GPUs halve the compute time.
    assert denoise_time(W, 1_000_000, Cluster(20), R).compute_s == pytest.approx(90.0)
    # The holdout is not denoised: 2% held out -> 98% of the work.
    held = dataclasses.replace(W, holdout_fraction=0.02)
    assert denoise_time(held, 1_000_000, Cluster(10), R).compute_s == pytest.approx(176.4)
    # float16 noisy (read) and float32 denoised (written): 1M x 3072 x (2 + 4) bytes; a
    # float16 denoised set also halves what a refit reads of it.
    half = dataclasses.replace(W, noisy_bytes_per_value=2)
    assert denoise_time(half, 1_000_000, Cluster(10), R).bytes == 1_000_000 * 3072 * 6
    both = dataclasses.replace(half, denoised_bytes_per_value=2)
    assert both.refit_bytes_per_image() < W.refit_bytes_per_image()
    assert storage_bound_beyond(both, Cluster(1), R)["denoise"] == pytest.approx(
        2 * storage_bound_beyond(W, Cluster(1), R)["denoise"]
    )


def test_training_hours_ddp_efficiency_and_mixed_bytes():
    # Refit: 1e7 images x 122.4 GFLOP over 8 GPUs x 153 TFLOP/s x 0.9 = 1.224e18 / 1.1016e15.
    t = refit_time(W, 1_000_000, Cluster(8, ddp_efficiency=0.9), R)
    assert t.compute_s == pytest.approx(1.224e18 / 1.1016e15, rel=1e-12)
    # One GPU has no DDP loss: 1.224e18 / 1.53e14 = 8000 s.
    assert refit_time(W, 1, Cluster(1, ddp_efficiency=0.5), R).compute_s == pytest.approx(8000.0)
    # Bytes per drawn image: a quarter clean uint8, three quarters denoised float32.
    quarter = dataclasses.replace(W, clean_weight=0.25)
    assert quarter.refit_bytes_per_image() == (0.25 * 1 + 0.75 * 4) * 3072
    assert refit_time(quarter, 5, Cluster(8), R).bytes == pytest.approx(1e7 * 3.25 * 3072)
    # By set size (clean_weight None): 4% clean of all items -> 1/25 of draws are clean.
    assert W.refit_bytes_per_image() == pytest.approx((1 / 25 + 24 / 25 * 4) * 3072)
    # Pretraining reads the clean set as uint8: 5e7 images x 3072 bytes.
    p = pretrain_time(W, Cluster(8, storage_gbps=1.0), R)
    assert p.bytes == 5e7 * 3072 and p.storage_s == pytest.approx(153.6)
    assert p.compute_s == pytest.approx(5 * t.compute_s)
    # Evaluation: 5e4 samples x 35 NFE x 40.8 GFLOP over 10 x 340 TFLOP/s = 21 s, no bytes.
    e = evaluate_time(W, Cluster(10), R)
    assert e.compute_s == pytest.approx(21.0) and e.bytes == 0 and e.bound == "compute"


def test_run_hours_and_rows():
    row = plan_row(W, 1_000_000, Cluster(8), R)
    k = W.iterations
    expected = (
        row.pretrain.hours
        + (k + 1) * row.evaluate.hours
        + k * (row.denoise.hours + row.refit.hours)
    )
    assert row.run_hours == pytest.approx(expected, rel=1e-12)
    assert (
        row.batch_per_gpu == 64 and row.bytes_per_iteration == row.denoise.bytes + row.refit.bytes
    )
    rows = plan_rows([W], [50_000, 1_000_000], [8, 64, 512], R)
    assert [(r.noisy, r.gpus) for r in rows] == [
        (n, g) for n in (50_000, 1_000_000) for g in (8, 64, 512)
    ]
    d = rows[0].to_dict()
    assert d["denoise"]["bound"] == "compute" and d["run_hours"] == rows[0].run_hours


def test_storage_crossover_is_where_the_bound_flips():
    c = Cluster(1, ddp_efficiency=0.9, storage_gbps=10.0)
    beyond = storage_bound_beyond(W, c, R)
    # denoise: 15 x 40.8e9 x 1e10 / (3.4e14 x 2 x 12288) = 732.42... GPUs.
    assert beyond["denoise"] == pytest.approx(15 * GFLOP * 1e10 / (340e12 * 2 * 12288))
    for stage, fn in (("denoise", denoise_time), ("refit", refit_time)):
        below, above = int(beyond[stage]), int(beyond[stage]) + 1
        assert fn(W, 10**6, dataclasses.replace(c, gpus=below), R).bound == "compute", stage
        assert fn(W, 10**6, dataclasses.replace(c, gpus=above), R).bound == "storage", stage


def test_bad_values_name_the_flag():
    with pytest.raises(ValueError, match=r"^--plan-gpus: 0; must be >= 1"):
        plan_row(W, 10, Cluster(0), R)
    with pytest.raises(ValueError, match=r"^--plan-sizes: -5"):
        plan_row(W, -5, Cluster(8), R)
    with pytest.raises(ValueError, match=r"^--plan-efficiency"):
        plan_row(W, 10, Cluster(8, ddp_efficiency=1.2), R)
    with pytest.raises(ValueError, match=r"^--plan-train-tflops"):
        plan_row(W, 10, Cluster(8), Rates(1.0, 0.0))


def test_counts_and_formatting():
    assert [parse_count(x, "--f") for x in ("50k", "1M", "100M", "2.5k", "1G", "7")] == [
        50_000,
        1_000_000,
        100_000_000,
        2_500,
        10**9,
        7,
    ]
    assert parse_counts("8, 64,512", "--plan-gpus") == (8, 64, 512)
    for bad in ("0", "-5", "1.5", "ten", "1T"):
        with pytest.raises(ValueError, match="^--f: "):
            parse_count(bad, "--f")
    assert [short_count(n) for n in (50_000, 10**6, 10**8, 1234)] == ["50k", "1M", "100M", "1234"]
    assert [fmt_hours(h) for h in (0.0004, 0.00651, 0.321, 3.36, 68.4, 1234.5)] == [
        "<0.001",
        "0.00651",
        "0.321",
        "3.36",
        "68.4",
        "1,234",
    ]


def test_training_flops_hand_count():
    # The mlp denoiser (3 residual blocks of 128): forward 2 x (66 x 128 + 6 x 128^2 + 128 x 2)
    # per image; backward adds the weight gradients (as much again) and the input gradients of
    # every layer but the first, whose input (x and the sigma embedding) needs none.
    dim, h = 2, 128
    forward = 2 * ((dim + 64) * h + 3 * 2 * h * h + h * dim)
    cost = network_cost(NetworkConfig(preset="mlp", channels=dim), batch_size=7)
    assert cost.forward_flops == forward
    assert cost.train_flops == 3 * forward - 2 * (dim + 64) * h
    assert cost.parameters > 0
    # The forward count is the benchmark's.
    tiny = NetworkConfig(preset="tiny", channels=1, resolution=16)
    assert network_cost(tiny).forward_flops == benchmark.denoiser_flops(tiny, 4) / 4


def test_workload_from_config(tmp_path):
    w = workload_from_config("fashion-mnist-cpu@1x16")
    assert (w.noisy_bytes_per_value, w.denoised_bytes_per_value) == (4, 4)
    half = tmp_path / "half.yaml"
    half.write_text(
        "network: {preset: tiny, channels: 1, resolution: 16}\n"
        "data: {noisy_dtype: float16}\ndenoise: {out_dtype: float16}\n"
    )
    h = workload_from_config(f"{half}@16")
    assert (h.noisy_bytes_per_value, h.denoised_bytes_per_value) == (2, 2)
    assert (w.name, w.network, w.channels, w.resolution) == (
        "fashion-mnist-cpu@1x16",
        "tiny",
        1,
        16,
    )
    # The preset's schedule: 8 SDE denoise levels (15 NFE), eval 10 levels (19 NFE) on 1000 samples.
    assert (w.denoise_steps, w.denoise_nfe) == (8, 15)
    assert (w.eval_nfe, w.eval_samples) == (19, 1000)
    assert (w.iterations, w.refit_kimg, w.pretrain_kimg, w.batch_size) == (2, 8, 12, 64)
    # Every item noisy: the preset's clean set is a pretraining set of its own (400 items),
    # which does not grow with the data; the plan counts none.
    assert (w.clean_fraction, w.holdout_fraction) == (0.0, 0.1)
    tiny = NetworkConfig(preset="tiny", channels=1, resolution=16)
    assert w.flops_per_evaluation == benchmark.denoiser_flops(tiny, 2) / 2
    # A preset whose data folder is not on this machine still plans (no data is read).
    assert load_plan_config("celeba64").network.preset == "ncsnpp-celeba64"
    # The anchors: 9.5k evaluations/s x 40.8 GFLOP; 1.25k images/s x 3 x 40.8 GFLOP.
    a = anchor_rates()
    assert a.denoise_tflops == pytest.approx(387.6) and a.train_tflops == pytest.approx(153.0)
    assert "H200 anchor" in a.denoise_source and "H200 anchor" in a.train_source


def test_cli_plan_from_anchors_without_measuring(tmp_path, capsys):
    out = tmp_path / "b.json"
    args = ["benchmark", "--plan", "--plan-rates", "h200", "--out", str(out)]
    args += ["--plan-configs", "fashion-mnist-cpu@1x16", "--plan-sizes", "60k,1M"]
    args += ["--plan-gpus", "1,4", "--plan-storage-gbps", "2.5"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "387.6 TFLOP/s [H200 anchor, not measured here" in text
    assert "153.0 TFLOP/s [H200 anchor" in text and "2.5 GB/s aggregate" in text
    rows = [line for line in text.splitlines() if line.startswith("  fashion-mnist-cpu@1x16 ")]
    assert [line.split()[1:3] for line in rows] == [
        ["60k", "1"],
        ["60k", "4"],
        ["1M", "1"],
        ["1M", "4"],
    ]
    assert not out.exists()  # nothing measured, nothing written
    # Given rates replace the anchors, and say so.
    assert main(args + ["--plan-denoise-tflops", "100", "--plan-train-tflops", "50"]) == 0
    text = capsys.readouterr().out
    assert "100.0 TFLOP/s [--plan-denoise-tflops]" in text
    assert "50.0 TFLOP/s [--plan-train-tflops]" in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--plan", "--plan-sizes", "-5"], "--plan-sizes: '-5'; must be a whole number >= 1"),
        (["--plan", "--plan-gpus", "8,0"], "--plan-gpus: '0'; must be a whole number >= 1"),
        (["--plan", "--plan-efficiency", "0"], "--plan-efficiency: 0.0; must lie in (0, 1]"),
        (["--plan", "--plan-storage-gbps", "-1"], "--plan-storage-gbps: -1.0; must be > 0"),
        (["--plan", "--plan-rates", "a100"], "--plan-rates: 'a100'; allowed: measured, h200"),
        (["--plan", "--plan-train-tflops", "0"], "--plan-train-tflops: 0.0; must be > 0"),
        (["--plan", "--plan-configs", "cifar10@30"], "--plan-configs: cifar10@30: network."),
        (["--plan", "--plan-configs", "nope"], "--plan-configs: 'nope' is neither a preset"),
        (["--plan-gpus", "8"], "--plan-gpus: needs --plan"),
    ],
)
def test_cli_bad_plan_values_fail_before_work(extra, message, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["benchmark", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err
    assert not out.exists()
