"""The diffusion math: EDM preconditioning and loss, networks, EMA, samplers, augmentation
(no Ray)."""

from sfbd.diffusion.augment import AUGMENT_DIM, AugmentPipe
from sfbd.diffusion.ema import EMA, ema_beta
from sfbd.diffusion.loss import EDMLoss
from sfbd.diffusion.networks import NetworkConfig, build_denoiser, load_denoiser, save_denoiser
from sfbd.diffusion.precond import EDMPrecond
from sfbd.diffusion.samplers import backward_denoise, backward_sigmas, generate, karras_sigmas

__all__ = [
    "AUGMENT_DIM",
    "AugmentPipe",
    "EDMLoss",
    "EDMPrecond",
    "EMA",
    "NetworkConfig",
    "backward_denoise",
    "backward_sigmas",
    "build_denoiser",
    "ema_beta",
    "generate",
    "karras_sigmas",
    "load_denoiser",
    "save_denoiser",
]
