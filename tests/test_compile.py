"""`denoise.compile` / `eval.compile`: the compiled denoiser gives what the eager one gives."""

import numpy as np
import torch

from sfbd.config import DenoiseConfig
from sfbd.data.store import items_table, table_items
from sfbd.diffusion.networks import NetworkConfig, build_denoiser
from sfbd.runfiles import save_denoiser_at
from sfbd.stages.denoise import DenoiseBatch, DenoiseTask


def test_compiled_denoise_actor_matches_eager(tmp_path):
    torch.manual_seed(0)
    cfg = NetworkConfig(preset="mlp", channels=2)
    ckpt = tmp_path / "mlp.pt"
    save_denoiser_at(ckpt, build_denoiser(cfg), cfg)

    def task(compile: bool) -> DenoiseTask:
        config = DenoiseConfig(steps=4, threads=1, compile=compile)
        return DenoiseTask(str(ckpt), 0.59, (2,), config, seed=0, iteration=1)

    rng = np.random.default_rng(0)
    batch = items_table(np.arange(64), rng.normal(size=(64, 2)).astype(np.float32))
    eager = DenoiseBatch(task(compile=False))
    compiled = DenoiseBatch(task(compile=True))
    assert compiled.denoiser is not eager.denoiser and hasattr(compiled.denoiser, "_orig_mod")
    ids_e, x_e = table_items(eager(batch), (2,))
    ids_c, x_c = table_items(compiled(batch), (2,))
    assert np.array_equal(ids_e, ids_c)
    assert np.abs(x_e - x_c).max() < 1e-4
    assert np.abs(x_e - table_items(batch, (2,))[1]).max() > 1e-2  # it did denoise
