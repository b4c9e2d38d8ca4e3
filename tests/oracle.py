"""Independent dense float64 oracles: the formulas written out, N x K and all.

Nothing here imports the library: the tests compare the library against these.
Inputs are in *bin coordinates* (bin centres at 0..K-1) unless said otherwise.
Autograd through these dense formulas gives the reference gradients.
"""

import math

import torch


def window(d, kernel="gaussian", sigma=1.0):
    """Parzen window w(d) of the distance d (in bin widths) from a bin centre."""
    if kernel == "gaussian":
        return torch.exp(-(d**2) / (2.0 * sigma**2))
    if kernel == "bspline":  # cubic B-spline, support (-2, 2), sums to 1 over integer shifts
        a = d.abs()
        inner = 2.0 / 3.0 - a**2 + a**3 / 2.0
        outer = (2.0 - a) ** 3 / 6.0
        return torch.where(a < 1, inner, torch.where(a < 2, outer, torch.zeros_like(a)))
    if kernel == "box":  # zero-order B-spline: the bin whose centre is nearest, [c-0.5, c+0.5)
        return ((d >= -0.5) & (d < 0.5)).to(d.dtype)
    if kernel == "nearest":  # MONAI's zero-order B-spline: ties at |d| = 1/2 split
        return (d.abs() < 0.5).to(d.dtype) + 0.5 * (d.abs() == 0.5).to(d.dtype)
    # kornia's kernels of radius R = sigma (Xu et al. 2008, eq. 22; a truncated Gaussian with
    # peak 1; a rectangle), each 0 beyond |d| = R
    a = d.abs() / sigma
    if kernel == "xu":
        quad = torch.where(a < 0.5, 1.0 - 0.1 * a - 1.8 * a**2, 1.9 - 3.7 * a + 1.8 * a**2)
        return torch.where(a <= 1.0, quad, torch.zeros_like(a))
    if kernel == "tgauss":
        return torch.where(a <= 1.0, torch.exp(-0.5 * a**2), torch.zeros_like(a))
    if kernel == "rect":
        return (a <= 1.0).to(d.dtype)
    raise ValueError(kernel)


def dense_joint(u, v, m=None, num_bins=8, sigma=0.5, kernel_u="gaussian", kernel_v="gaussian"):
    """J[b, a, c] = sum_n m[b, n] w(u[b, n] - a) w(v[b, n] - c), every bin, in float64."""
    u, v = u.double(), v.double()
    a = torch.arange(num_bins, dtype=torch.float64, device=u.device)
    wu = window(u[..., None] - a, kernel_u, sigma)  # (B, N, K): the tensor the library never builds
    wv = window(v[..., None] - a, kernel_v, sigma)
    if m is not None:
        wu = wu * m.double()[..., None]
    return torch.einsum("...na,...nc->...ac", wu, wv)


def dense_hist(u, m=None, num_bins=8, sigma=0.5, kernel="gaussian"):
    """H[b, a] = sum_n m[b, n] w(u[b, n] - a), every bin, in float64."""
    u = u.double()
    a = torch.arange(num_bins, dtype=torch.float64)
    w = window(u[..., None] - a, kernel, sigma)
    if m is not None:
        w = w * m.double()[..., None]
    return w.sum(-2)


def _entropy(c):
    """-sum p log p over the last axis of non-negative counts c (..., n), p = c / sum(c), 0 log 0
    = 0. log p = log c - log T with log T = log m + log1p(s / m), m the largest count and s
    the sum of the others: a distribution nearly in one cell (p = 1 - r) keeps its entropy
    to rounding, where the log of the rounded 1 - r keeps only eps / r of it (a one-pixel
    histogram at sigma 0.135 bins: entropies of 8e-11 nats, its arithmetic NMI 5.6e-6
    instead of 0)."""
    m = c.amax(-1, keepdim=True)
    m = torch.where(m > 0, m, 1.0)
    others = c.scatter(-1, c.argmax(-1, keepdim=True), 0.0).sum(-1, keepdim=True) / m
    log_t = torch.log(m) + torch.log1p(others)
    p = c / m / (1.0 + others)
    return -torch.where(c > 0, p * (torch.log(torch.where(c > 0, c, 1.0)) - log_t), 0.0).sum(-1)


def entropies(joint):
    """(H(a), H(b), H(a, b)) in nats of a joint histogram (..., K, K), 0 log 0 = 0."""
    return _entropy(joint.sum(-1)), _entropy(joint.sum(-2)), _entropy(joint.flatten(-2))


def mutual_information(joint, normalize="none", base=math.e):
    ha, hb, hab = entropies(joint)
    mi = ha + hb - hab
    if normalize == "none":
        return mi / math.log(base)
    if normalize == "arithmetic":
        return 2 * mi / (ha + hb)
    if normalize == "studholme":
        return (ha + hb) / hab
    raise ValueError(normalize)


def to_bins(x, lo, hi, num_bins):
    """Data values -> bin coordinates: lo -> 0, hi -> K - 1."""
    return (x.double() - lo) * (num_bins - 1) / (hi - lo)


def seed_mutual_information(input1, input2, sigma=0.4, num_bins=256, normalize=True, marginals="seed"):
    """The seed repository's MutualInformation.forward, transcribed (float64): images in [0, 1].

    Its current version: Gaussian std = sigma on the 0..255 scale, bins linspace(0, 255, K), log2.
    ``marginals="joint"`` takes the marginals as sums of the joint instead (this library's choice).
    (Its first version used std = 2 * sigma**2; the README's sigma=0.4 example predates the change.)
    """
    eps = 1e-10
    s = sigma
    bins = torch.linspace(0, 255, num_bins, dtype=torch.float64)
    x1 = (input1.double() * 255).flatten(1)[..., None]
    x2 = (input2.double() * 255).flatten(1)[..., None]

    def marginal(values):
        kv = torch.exp(-0.5 * ((values - bins) / s) ** 2)
        pdf = kv.mean(1)
        return pdf / (pdf.sum(1, keepdim=True) + eps), kv

    p1, k1 = marginal(x1)
    p2, k2 = marginal(x2)
    j = k1.transpose(1, 2) @ k2
    p12 = j / (j.sum((1, 2)).view(-1, 1, 1) + eps)
    if marginals == "joint":
        p1, p2 = p12.sum(2), p12.sum(1)
    h1 = -(p1 * torch.log2(p1 + eps)).sum(1)
    h2 = -(p2 * torch.log2(p2 + eps)).sum(1)
    h12 = -(p12 * torch.log2(p12 + eps)).sum((1, 2))
    mi = h1 + h2 - h12
    return 2 * mi / (h1 + h2) if normalize else mi
