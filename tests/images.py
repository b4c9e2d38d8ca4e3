"""Real test images from a dependency's sample data (matplotlib ships a photograph and an MRI slice)."""

import numpy as np
import torch
from matplotlib import cbook
from PIL import Image


def photo(size=None) -> np.ndarray:
    """Grace Hopper's photograph, grey, uint8 (512 x 600 unless resized to ``size`` (w, h))."""
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        img = Image.open(f).convert("L")
        if size is not None:
            img = img.resize(size, Image.BILINEAR)
        return np.asarray(img)


def mri() -> np.ndarray:
    """A 256 x 256 MRI slice (big-endian uint16)."""
    with cbook.get_sample_data("s1045.ima.gz") as f:
        raw = f.read()  # matplotlib hands .gz sample files over already decompressed
    return np.frombuffer(raw, ">u2").reshape(256, 256).astype(np.float32)


def rotated(a: np.ndarray, degrees: float) -> np.ndarray:
    return np.asarray(Image.fromarray(a).rotate(degrees, resample=Image.BILINEAR))


def to_tensor01(a: np.ndarray) -> torch.Tensor:
    """uint8 image -> (1, 1, H, W) float32 in [0, 1], like torchvision's ToTensor."""
    return torch.from_numpy(a.astype(np.float32) / 255.0)[None, None]


def remap(x: torch.Tensor) -> torch.Tensor:
    """A non-monotonic intensity map in [0, 1]: another 'modality' of the same anatomy."""
    return torch.sin(3.0 * x) ** 2
