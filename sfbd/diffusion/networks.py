"""Raw networks F(x, c_noise) by named preset, and checkpoints as state dict + config.

The UNet follows the structure of EDM's `SongUNet` (Karras et al. 2022, Appendix F.2; Song et
al. 2021's DDPM++/NCSN++): residual blocks with an additive noise embedding, skip
connections from every encoder block, self-attention at chosen levels. Presets:

- `tiny`: < 1M parameters, for CPU tests.
- `small`: a few M parameters, for 28-32 px runs on one GPU.
- `ddpmpp-cifar10`: EDM's DDPM++ CIFAR-10 configuration (128 channels, multipliers 2,2,2,
  4 blocks a level, attention at level 1 = 16 px, dropout 0.13), about 56M parameters.
- `ncsnpp-celeba64`: NCSN++-style 64 px configuration (multipliers 1,2,2,2, Fourier noise
  embedding, attention at 16 px). EDM's FIR resampling and residual encoder are not copied:
  resampling here is a 2x2 box filter / nearest upsampling, as EDM's DDPM++ uses.
- `mlp`: a residual MLP for vector data (the 2-D toy), 3 blocks of 128.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sfbd.diffusion.precond import EDMPrecond

CHECKPOINT_FORMAT = "sfbd-denoiser-v1"


@dataclass(frozen=True)
class UNetShape:
    model_channels: int
    channel_mult: tuple[int, ...]
    num_blocks: int
    attn_levels: tuple[int, ...]
    dropout: float
    embedding: str = "positional"  # or "fourier"


@dataclass(frozen=True)
class MLPShape:
    hidden: int
    num_layers: int
    dropout: float = 0.0


PRESETS: dict[str, UNetShape | MLPShape] = {
    "tiny": UNetShape(16, (1, 2), 1, (), 0.0),
    "small": UNetShape(64, (1, 2, 2), 2, (2,), 0.1),
    "ddpmpp-cifar10": UNetShape(128, (2, 2, 2), 4, (1,), 0.13),
    "ncsnpp-celeba64": UNetShape(128, (1, 2, 2, 2), 4, (2,), 0.1, embedding="fourier"),
    "mlp": MLPShape(hidden=128, num_layers=3),
}


@dataclass
class NetworkConfig:
    """Everything needed to rebuild a denoiser; stored beside its weights in checkpoints."""

    preset: str = "tiny"
    channels: int = 3  # image channels (1 or 3), or the vector dimension for `mlp`
    resolution: int = 32  # image side in pixels; unused for `mlp`
    sigma_data: float = 0.5
    dropout: float | None = None  # None: the preset's value
    overrides: dict = field(default_factory=dict)  # e.g. {"model_channels": 32}
    # Length of the augmentation labels the UNet is conditioned on (sfbd.diffusion.augment);
    # 0: none (checkpoints written before this key existed load as 0).
    augment_dim: int = 0

    def shape(self) -> UNetShape | MLPShape:
        if self.preset not in PRESETS:
            raise ValueError(
                f"network.preset: unknown preset {self.preset!r}; allowed: {sorted(PRESETS)}"
            )
        shape = PRESETS[self.preset]
        changes = dict(self.overrides)
        if self.dropout is not None:
            changes["dropout"] = self.dropout
        unknown = set(changes) - {f.name for f in dataclasses.fields(shape)}
        if unknown:
            raise ValueError(
                f"network.overrides: unknown keys {sorted(unknown)} for preset {self.preset!r}"
            )
        for key in ("channel_mult", "attn_levels"):
            if key in changes:
                changes[key] = tuple(changes[key])
        return dataclasses.replace(shape, **changes)

    def validate(self) -> None:
        shape = self.shape()
        if self.augment_dim < 0 or (self.augment_dim and isinstance(shape, MLPShape)):
            raise ValueError(
                f"network.augment_dim: {self.augment_dim} not allowed; use 0 "
                f"(or > 0 for a UNet preset, not mlp)"
            )
        if isinstance(shape, UNetShape):
            if self.channels not in (1, 3):
                raise ValueError(f"network.channels: {self.channels} not allowed; use 1 or 3")
            factor = 2 ** (len(shape.channel_mult) - 1)
            if self.resolution % factor:
                raise ValueError(
                    f"network.resolution: {self.resolution} px is not divisible by {factor} "
                    f"(preset {self.preset!r} has {len(shape.channel_mult)} levels)"
                )
        elif self.channels < 1:
            raise ValueError(f"network.channels: {self.channels}; must be >= 1 for mlp")


# ---------------------------------------------------------------------------------------------
# Building blocks


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(32, channels // 4), num_channels=channels, eps=1e-6)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of c_noise (Vaswani et al.; EDM's DDPM++)."""

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / half
        freqs = (1 / self.max_positions) ** freqs
        x = x.float().outer(freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of c_noise (Tancik et al.; EDM's NCSN++)."""

    def __init__(self, num_channels: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().outer(2 * math.pi * self.freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class UNetBlock(nn.Module):
    """Residual block with an additive noise embedding, optional resampling and attention."""

    def __init__(
        self,
        cin: int,
        cout: int,
        emb: int,
        dropout: float,
        attention: bool = False,
        resample: str | None = None,
    ):
        super().__init__()
        self.resample = resample
        self.norm0 = group_norm(cin)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb, cout)
        self.norm1 = group_norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if (cin != cout or resample) else None
        self.attention = attention
        if attention:
            self.norm2 = group_norm(cout)
            self.qkv = nn.Conv2d(cout, 3 * cout, 1)
            self.proj = nn.Conv2d(cout, cout, 1)
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        skip_scale = math.sqrt(0.5)
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        h = F.silu(self.norm1(h + self.affine(emb)[:, :, None, None]))
        h = self.conv1(self.dropout(h))
        x = self._resample(x)
        if self.skip is not None:
            x = self.skip(x)
        x = (h + x) * skip_scale
        if self.attention:
            b, c, hh, ww = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(b, 3, c, hh * ww).unbind(1)
            a = F.scaled_dot_product_attention(
                q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None], v.transpose(1, 2)[:, None]
            )[:, 0].transpose(1, 2)
            x = (self.proj(a.reshape(b, c, hh, ww)) + x) * skip_scale
        return x


class UNet(nn.Module):
    """DDPM++/NCSN++-style UNet F(x, c_noise) (EDM's `SongUNet` structure); with
    `augment_dim` > 0 also F(x, c_noise, augment_labels), the labels mapped into the noise
    embedding as in EDM (non-leaking augmentation, `sfbd.diffusion.augment`)."""

    def __init__(self, channels: int, resolution: int, shape: UNetShape, augment_dim: int = 0):
        super().__init__()
        mc = shape.model_channels
        emb = mc * 4
        self.embed = (
            FourierEmbedding(mc) if shape.embedding == "fourier" else PositionalEmbedding(mc)
        )
        self.map0 = nn.Linear(mc, emb)
        self.map1 = nn.Linear(emb, emb)
        self.conv_in = nn.Conv2d(channels, mc, 3, padding=1)

        self.enc = nn.ModuleList()
        skips = [mc]
        cout = mc
        for level, mult in enumerate(shape.channel_mult):
            if level > 0:
                self.enc.append(UNetBlock(cout, cout, emb, shape.dropout, resample="down"))
                skips.append(cout)
            for _ in range(shape.num_blocks):
                cin, cout = cout, mc * mult
                attn = level in shape.attn_levels
                self.enc.append(UNetBlock(cin, cout, emb, shape.dropout, attention=attn))
                skips.append(cout)

        self.dec = nn.ModuleList()
        self.dec_takes_skip: list[bool] = []
        last = len(shape.channel_mult) - 1
        for level in reversed(range(len(shape.channel_mult))):
            mult = shape.channel_mult[level]
            if level == last:
                self.dec.append(UNetBlock(cout, cout, emb, shape.dropout, attention=True))
                self.dec.append(UNetBlock(cout, cout, emb, shape.dropout))
            else:
                self.dec.append(UNetBlock(cout, cout, emb, shape.dropout, resample="up"))
            self.dec_takes_skip += [False] * (2 if level == last else 1)
            for idx in range(shape.num_blocks + 1):
                cin, cout = cout + skips.pop(), mc * mult
                attn = idx == shape.num_blocks and level in shape.attn_levels
                self.dec.append(UNetBlock(cin, cout, emb, shape.dropout, attention=attn))
                self.dec_takes_skip.append(True)
        self.norm_out = group_norm(cout)
        self.conv_out = nn.Conv2d(cout, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        # Created last, so that the other layers draw the same initial weights as without it;
        # bias-free, so that zero labels add exactly nothing.
        self.map_augment = nn.Linear(augment_dim, mc, bias=False) if augment_dim else None

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, augment_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.embed(c_noise)
        if self.map_augment is not None:
            # None is zero labels; the map still runs, so that DDP sees its weight used.
            if augment_labels is None:
                augment_labels = emb.new_zeros(emb.shape[0], self.map_augment.in_features)
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        elif augment_labels is not None:
            raise ValueError("augment_labels given to a network built with augment_dim = 0")
        emb = F.silu(self.map1(F.silu(self.map0(emb))))
        h = self.conv_in(x)
        skips = [h]
        for block in self.enc:
            h = block(h, emb)
            skips.append(h)
        for block, takes_skip in zip(self.dec, self.dec_takes_skip, strict=True):
            if takes_skip:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


class MLP(nn.Module):
    """Residual MLP F(x, c_noise) for vector data such as the 2-D toy."""

    def __init__(self, dim: int, shape: MLPShape):
        super().__init__()
        h = shape.hidden
        self.embed = PositionalEmbedding(64)
        self.inp = nn.Linear(dim + 64, h)
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(h),
                nn.Linear(h, h),
                nn.SiLU(),
                nn.Dropout(shape.dropout),
                nn.Linear(h, h),
            )
            for _ in range(shape.num_layers)
        )
        self.out = nn.Linear(h, dim)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        h = self.inp(torch.cat([x, self.embed(c_noise)], dim=1))
        for layer in self.layers:
            h = h + layer(h)
        return self.out(F.silu(h))


# ---------------------------------------------------------------------------------------------
# Construction and checkpoints


def build_denoiser(config: NetworkConfig) -> EDMPrecond:
    """The preconditioned denoiser D(x, sigma) for a network configuration."""
    config.validate()
    shape = config.shape()
    if isinstance(shape, MLPShape):
        net: nn.Module = MLP(config.channels, shape)
    else:
        net = UNet(config.channels, config.resolution, shape, config.augment_dim)
    return EDMPrecond(net, sigma_data=config.sigma_data)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def denoiser_payload(denoiser: EDMPrecond, config: NetworkConfig, **extra) -> bytes:
    """A checkpoint's bytes: weights + config (+ `extra`), never a pickled class."""
    state = {k: v.detach().cpu() for k, v in denoiser.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "network": dataclasses.asdict(config),
        "state_dict": state,
        **extra,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def denoiser_from_payload(
    data: bytes, what: str, map_location: str | torch.device = "cpu"
) -> tuple[EDMPrecond, NetworkConfig, dict]:
    """Inverse of `denoiser_payload`; `what` names the file in errors. Loads tensors and plain
    data only: a file whose pickle would build other objects (run code) is refused."""
    from sfbd.safeload import reason, torch_load

    # Truncated, foreign, or a pickle with code: one line, nothing executed.
    payload = torch_load(
        data, f"checkpoint: {what} is not a readable sfbd checkpoint", map_location
    )
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint: {what} is not an sfbd checkpoint ({CHECKPOINT_FORMAT})")
    try:
        config = NetworkConfig(**payload["network"])
        denoiser = build_denoiser(config)
        denoiser.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"checkpoint: {what} is not an sfbd checkpoint ({CHECKPOINT_FORMAT}): "
            f"{type(exc).__name__}: {reason(exc)}"
        ) from exc
    return denoiser.to(map_location).eval(), config, payload


def save_denoiser(
    path: str | os.PathLike, denoiser: EDMPrecond, config: NetworkConfig, **extra
) -> None:
    """Write a checkpoint to a local file atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(denoiser_payload(denoiser, config, **extra))
    os.replace(tmp, path)


def load_denoiser(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[EDMPrecond, NetworkConfig, dict]:
    """Rebuild a denoiser from a local checkpoint file alone: `(denoiser, config, payload)`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    return denoiser_from_payload(path.read_bytes(), str(path), map_location)
