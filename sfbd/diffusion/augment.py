"""Non-leaking geometric augmentation of image batches, after EDM (Karras et al. 2022,
Appendix F.2, itself after Karras et al. 2020's ADA), written for this project.

Every sample of a batch draws five transforms, each independently with probability `p`:
x/y flips, an integer translation, an isotropic scaling, a rotation and an anisotropic
scaling. Together they form one affine map per sample, applied with a single bilinear
`grid_sample` (reflection padding) on the batch's device. The draw is returned as a label
vector of `AUGMENT_DIM` numbers that the network receives as conditioning; all labels are
zero for a sample left untouched, and the samplers pass zero labels, so the model learns the
augmented images as a *separate* conditional distribution and never generates them.

The label layout (what a sample's row holds, each 0 when its transform was not drawn):

| index | transform | value |
|---|---|---|
| 0 | x-flip | 1 if mirrored left-right |
| 1 | y-flip | 1 if mirrored top-bottom |
| 2, 3 | integer translation | (tx, ty) pixels / (translate_max * side), in [-1, 1] |
| 4 | isotropic scaling | log2(scale) / scale_std |
| 5, 6 | rotation by angle a | cos(a) - 1, sin(a) |
| 7, 8 | anisotropic scaling by 2**s along direction phi | s cos(2 phi), s sin(2 phi) / aniso_std |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

AUGMENT_DIM = 9


@dataclass(frozen=True)
class AugmentSpec:
    """The distributions of the transforms, once a transform is drawn for a sample.

    x-flip, y-flip: a fair coin each (so a flip share of p / 2). Integer translation: tx and
    ty uniform on the integers of [-translate_max * side, translate_max * side]. Isotropic
    scaling: log2(scale) ~ N(0, scale_std^2). Rotation: angle uniform in [-pi, pi).
    Anisotropic scaling: 2**s along a direction phi uniform in [0, pi) and 2**-s across it,
    s ~ N(0, aniso_std^2). EDM's CIFAR-10 values.
    """

    translate_max: float = 0.125
    scale_std: float = 0.2
    aniso_std: float = 0.2


@dataclass
class AugmentDraw:
    """One batch's transform parameters, each `[B]`; zeros (and flips 0) mean "not applied"."""

    xflip: torch.Tensor  # 0 or 1
    yflip: torch.Tensor  # 0 or 1
    tx: torch.Tensor  # integer pixels, positive: content moves right
    ty: torch.Tensor  # integer pixels, positive: content moves down
    log2_scale: torch.Tensor
    angle: torch.Tensor  # radians, positive: counter-clockwise on screen
    log2_aniso: torch.Tensor
    aniso_dir: torch.Tensor  # radians in [0, pi)

    @classmethod
    def identity(cls, batch: int, device: torch.device | str = "cpu") -> AugmentDraw:
        zeros = torch.zeros(batch, device=device)
        return cls(*(zeros.clone() for _ in range(8)))

    def labels(self, height: int, width: int, spec: AugmentSpec) -> torch.Tensor:
        """The `[B, AUGMENT_DIM]` conditioning labels (see the module's table)."""
        aniso = self.log2_aniso / spec.aniso_std
        return torch.stack(
            [
                self.xflip,
                self.yflip,
                self.tx / max(spec.translate_max * width, 1e-8),
                self.ty / max(spec.translate_max * height, 1e-8),
                self.log2_scale / spec.scale_std,
                self.angle.cos() - 1,
                self.angle.sin(),
                aniso * (2 * self.aniso_dir).cos(),
                aniso * (2 * self.aniso_dir).sin(),
            ],
            dim=1,
        ).float()

    def applied(self) -> torch.Tensor:
        """`[B]` bool: whether any transform changes the sample."""
        parts = (self.xflip, self.yflip, self.tx, self.ty, self.log2_scale, self.angle)
        return torch.stack([*parts, self.log2_aniso]).ne(0).any(dim=0)

    def forward_matrices(self) -> torch.Tensor:
        """`[B, 3, 3]` maps from a source pixel's position to where it lands, in pixel units
        about the image centre (x right, y down): flips, then scalings, rotation, translation."""
        batch, device = self.xflip.shape[0], self.xflip.device
        eye = torch.eye(3, device=device).expand(batch, 3, 3)

        def linear(a, b, c, d):
            m = eye.clone()
            m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a, b, c, d
            return m

        zero = torch.zeros(batch, device=device)
        flip = linear(1 - 2 * self.xflip, zero, zero, 1 - 2 * self.yflip)
        s = self.log2_scale.exp2()
        scale = linear(s, zero, zero, s)
        # Anisotropic: 2**a along phi, 2**-a across it = R(phi) diag(2**a, 2**-a) R(-phi).
        a, c, n = self.log2_aniso.exp2(), self.aniso_dir.cos(), self.aniso_dir.sin()
        aniso = linear(
            a * c * c + n * n / a, (a - 1 / a) * c * n, (a - 1 / a) * c * n, a * n * n + c * c / a
        )
        # Counter-clockwise on screen, where y points down.
        cos, sin = self.angle.cos(), self.angle.sin()
        rotate = linear(cos, sin, -sin, cos)
        shift = eye.clone()
        shift[:, 0, 2], shift[:, 1, 2] = self.tx, self.ty
        return shift @ rotate @ aniso @ scale @ flip


def draw(
    batch: int,
    height: int,
    width: int,
    p: float,
    spec: AugmentSpec = AugmentSpec(),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> AugmentDraw:
    """Transform parameters for `batch` samples, each transform drawn with probability `p`
    from the `generator` (on `device`; None: torch's global generator)."""

    def rand(*shape):
        return torch.rand(shape, generator=generator, device=device)

    def randn(*shape):
        return torch.randn(shape, generator=generator, device=device)

    def gate(values):
        return torch.where(rand(batch) < p, values, torch.zeros_like(values))

    xflip = gate((rand(batch) < 0.5).float())
    yflip = gate((rand(batch) < 0.5).float())
    max_x = math.floor(spec.translate_max * width)
    max_y = math.floor(spec.translate_max * height)
    tx = (rand(batch) * (2 * max_x + 1)).floor().clamp(max=2 * max_x) - max_x
    ty = (rand(batch) * (2 * max_y + 1)).floor().clamp(max=2 * max_y) - max_y
    on = rand(batch) < p
    tx, ty = torch.where(on, tx, 0.0), torch.where(on, ty, 0.0)
    log2_scale = gate(randn(batch) * spec.scale_std)
    angle = gate((rand(batch) * 2 - 1) * math.pi)
    log2_aniso = gate(randn(batch) * spec.aniso_std)
    aniso_dir = torch.where(log2_aniso != 0, rand(batch) * math.pi, 0.0)
    return AugmentDraw(xflip, yflip, tx, ty, log2_scale, angle, log2_aniso, aniso_dir)


def transform(x: torch.Tensor, params: AugmentDraw) -> torch.Tensor:
    """`x` `[B, C, H, W]` with each sample's affine map applied (bilinear, reflection
    padding); samples with no transform are returned untouched."""
    _, _, height, width = x.shape
    inverse = torch.linalg.inv(params.forward_matrices().to(torch.float64))
    # grid_sample's coordinates (align_corners=False) are pixels about the centre divided by
    # half the side; theta maps an output position to the input position it reads.
    half = torch.tensor([width / 2, height / 2], dtype=torch.float64, device=x.device)
    theta = inverse[:, :2, :].clone()
    theta[:, :, :2] = theta[:, :, :2] * half[None, None, :] / half[None, :, None]
    theta[:, :, 2] = theta[:, :, 2] / half[None, :]
    grid = F.affine_grid(theta.to(torch.float32), list(x.shape), align_corners=False)
    out = F.grid_sample(
        x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False
    ).to(x.dtype)
    return torch.where(params.applied()[:, None, None, None], out, x)


class AugmentPipe:
    """`pipe(x, generator) -> (augmented x, labels [B, AUGMENT_DIM])` with probability `p`.

    At p = 0 the batch comes back as it is, with zero labels, and no random number is drawn,
    so a run without augmentation keeps its random stream.
    """

    def __init__(self, p: float, spec: AugmentSpec = AugmentSpec()):
        if not 0 <= p <= 1:
            raise ValueError(f"augment: p = {p}; must lie in [0, 1]")
        self.p = float(p)
        self.spec = spec

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4:
            raise ValueError(
                f"augment: expected images [B, C, H, W], got shape {tuple(x.shape)} "
                "(vectors are not augmented)"
            )
        batch, _, height, width = x.shape
        if self.p == 0:
            return x, torch.zeros(batch, AUGMENT_DIM, device=x.device)
        # In float32 even inside the training step's bf16 autocast: the affine maps are
        # products of matrices, which autocast would round to bf16.
        with torch.autocast(x.device.type, enabled=False):
            params = draw(batch, height, width, self.p, self.spec, generator, x.device)
            return transform(x, params), params.labels(height, width, self.spec)
