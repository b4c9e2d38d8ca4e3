"""The benchmarked implementations, each a loss ``fn(x, y, num_bins, sigma) -> scalar``.

x, y: images (B, 1, *spatial) with values in [0, 1]; ``num_bins`` bins whose centres span
[0, 1]; ``sigma`` the Gaussian kernel's std in bin widths. The moving image ``y`` gets the
gradient. Each peer is called with its own arguments set to the same bins and bandwidth:

* seed: ``bench/seed.py``, the seed repository's dense algorithm (log2, its epsilons).
* kornia: ``kornia.losses.mutual_information_loss``. Its kernels are not Gaussian: the default
  ``xu`` polynomial kernel is used with ``window_radius`` chosen so that the kernel's standard
  deviation is ``sigma`` (at radius 1 it is 0.3594 bin widths). It maps each sample's min..max
  onto the bin centres, the same as [0, 1] here up to the images' extreme values.
* kornia-hist2d: ``kornia.enhance.histogram2d`` (Gaussian, bandwidth in data units), then the
  entropies of the joint histogram.
* monai: ``monai.losses.GlobalMutualInformationLoss(kernel_type="gaussian")``: bin centres on
  linspace(0, 1, K) and std ``sigma_ratio`` times the bin width, so ``sigma_ratio = sigma``.
  It normalises each pixel's weights to sum 1 over the bins (the others do not).
* histogramdd: ``torch.histogramdd``, hard binning, forward only (no gradient): a floor.
* monai-compat, kornia-compat: this library's drop-ins (``mi.compat``), called exactly as
  monai and kornia above: the same numbers (tests/test_compat.py), on the fused op.
"""

import importlib
import math

import torch
from seed import seed_mutual_information  # bench/ is on sys.path: the scripts live there

XU_STD = 0.3593976  # std of kornia's xu kernel at window_radius=1, in bin widths

# Peak memory of each dense provider, in units of one (B, N, K) float32 tensor (forward and
# backward; measured on CPU, 8x1x256x256 at 64 bins: 5.0, 10.8, 5.1, 7.2; rounded up): the
# estimate that decides a skip.
DENSE_TENSORS = {"seed": 6, "kornia": 12, "kornia-hist2d": 6, "monai": 8}

# Providers that build no gradient (timed forward only).
FORWARD_ONLY = {"histogramdd"}


def entropy(p, dims):
    return -torch.where(p > 0, p * torch.log(p.clamp_min(1e-30)), 0.0).sum(dims)


def mi_from_joint(joint):
    """MI in nats of joint histograms (B, K, K)."""
    p = joint / joint.sum((-2, -1), keepdim=True)
    return entropy(p.sum(-1), -1) + entropy(p.sum(-2), -1) - entropy(p, (-2, -1))


def _mi(backend):
    import mi

    def run(x, y, num_bins, sigma):
        return mi.mutual_information(
            x, y, num_bins=num_bins, sigma=sigma, value_range=(0.0, 1.0), backend=backend
        ).sum()

    return run


def _seed():
    def run(x, y, num_bins, sigma):
        return seed_mutual_information(x, y, num_bins=num_bins, sigma=sigma).sum()

    return run


def _kornia(module="kornia.losses"):
    mutual_information_loss = importlib.import_module(module).mutual_information_loss

    def run(x, y, num_bins, sigma):
        return mutual_information_loss(
            y.flatten(1), x.flatten(1), num_bins=num_bins, window_radius=sigma / XU_STD
        ).sum()

    return run


def _kornia_hist2d():
    from kornia.enhance import histogram2d

    def run(x, y, num_bins, sigma):
        bins = torch.linspace(0.0, 1.0, num_bins, device=x.device)
        bandwidth = torch.tensor(sigma / (num_bins - 1), device=x.device)
        return mi_from_joint(histogram2d(x.flatten(1), y.flatten(1), bins, bandwidth)).sum()

    return run


def _monai(module="monai.losses"):
    GlobalMutualInformationLoss = importlib.import_module(module).GlobalMutualInformationLoss

    losses = {}

    def run(x, y, num_bins, sigma):
        key = (num_bins, sigma)
        if key not in losses:
            losses[key] = GlobalMutualInformationLoss(
                kernel_type="gaussian", num_bins=num_bins, sigma_ratio=sigma, reduction="sum"
            )
        return losses[key](y, x)

    return run


def _histogramdd():
    def run(x, y, num_bins, sigma):
        half = 0.5 / (num_bins - 1)  # bin centres on 0..1, edges half a bin outside
        edges = [-half, 1.0 + half] * 2
        joint = torch.stack(
            [
                torch.histogramdd(
                    torch.stack([a.flatten(), b.flatten()], 1), [num_bins] * 2, range=edges
                ).hist
                for a, b in zip(x.detach(), y.detach())
            ]
        )
        return mi_from_joint(joint).sum()

    return run


_FACTORIES = {
    "seed": _seed,
    "kornia": _kornia,
    "kornia-hist2d": _kornia_hist2d,
    "monai": _monai,
    "histogramdd": _histogramdd,
    "monai-compat": lambda: _monai("mi.compat.monai"),
    "kornia-compat": lambda: _kornia("mi.compat.kornia"),
}


def load(name, mi_backend="auto"):
    """The loss function of provider ``name``; ImportError when its package is missing.

    ``mi`` is the library with ``backend=mi_backend``; ``mi-torch`` and ``mi-triton`` pin it.
    """
    if name == "mi":
        return _mi(mi_backend)
    if name.startswith("mi-"):
        return _mi(name[3:])
    return _FACTORIES[name]()


def estimate_bytes(name, batch, numel, num_bins):
    """Estimated peak bytes of one forward+backward beyond the inputs (0: small, O(B K^2))."""
    return math.ceil(DENSE_TENSORS.get(name, 0) * batch * numel * num_bins * 4)
