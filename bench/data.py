"""Benchmark inputs: realistic image pairs in [0, 1], the same for every provider of a case.

2-D: crops of matplotlib's sample photograph (Grace Hopper), resized; 3-D: a smooth volume (a sum
of Gaussian blobs plus noise). The second image of each pair is a non-monotonic intensity
remapping of the first, shifted by a few pixels, with noise: a multi-modal pair, as in
registration, whose joint histogram is not a thin diagonal.
"""

import matplotlib.cbook
import matplotlib.image
import torch
import torch.nn.functional as F


def photograph():
    """The sample photograph as a (H, W) float32 grey image in [0, 1]."""
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    rgb = torch.from_numpy(matplotlib.image.imread(path).copy()).float() / 255
    return rgb[..., :3].mean(-1)


def photo_batch(batch, height, width, gen):
    """(B, 1, H, W): random crops (half to full size) of the photograph, resized."""
    photo = photograph()
    ph, pw = photo.shape
    out = []
    for _ in range(batch):
        scale = 0.5 + 0.5 * torch.rand((), generator=gen).item()
        ch, cw = int(ph * scale), int(pw * scale)
        top = int(torch.randint(0, ph - ch + 1, (), generator=gen))
        left = int(torch.randint(0, pw - cw + 1, (), generator=gen))
        crop = photo[top : top + ch, left : left + cw][None, None]
        out.append(F.interpolate(crop, (height, width), mode="bilinear", antialias=True))
    return torch.cat(out).clamp(0, 1)


def blob_volume(batch, shape, gen, blobs=12):
    """(B, 1, D, H, W): a sum of anisotropic Gaussian blobs, scaled to [0, 1], plus noise."""
    axes = [torch.linspace(0, 1, n) for n in shape]
    vol = torch.zeros(batch, 1, *shape)
    for b in range(batch):
        for _ in range(blobs):
            centre, width = torch.rand(3, generator=gen), 0.05 + 0.2 * torch.rand(3, generator=gen)
            g = [torch.exp(-0.5 * ((a - c) / w) ** 2) for a, c, w in zip(axes, centre, width)]
            amp = torch.rand((), generator=gen) * 2 - 0.5
            vol[b, 0] += amp * g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]
    lo, hi = vol.amin(), vol.amax()
    vol = (vol - lo) / (hi - lo)
    return (vol + 0.02 * torch.randn(vol.shape, generator=gen)).clamp(0, 1)


def remap(x, gen, shift=3):
    """The second modality: a non-monotonic remapping, a shift along every axis, and noise."""
    y = 0.5 + 0.5 * torch.sin(5.0 * x + 1.0) * (1.0 - 0.5 * x)
    y = torch.roll(y, shifts=[shift] * (x.dim() - 2), dims=tuple(range(2, x.dim())))
    return (y + 0.01 * torch.randn(y.shape, generator=gen)).clamp(0, 1)


def make_pair(shape, seed=0):
    """(x, y) float32 of shape (B, 1, *spatial) with values in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    batch, channels, *spatial = shape
    if channels != 1:
        raise ValueError("the benchmark inputs are single-channel")
    if len(spatial) == 2:
        x = photo_batch(batch, *spatial, gen)
    elif len(spatial) == 3:
        x = blob_volume(batch, spatial, gen)
    else:
        raise ValueError(f"2-D or 3-D images only, got shape {shape}")
    return x.contiguous(), remap(x, gen).contiguous()
