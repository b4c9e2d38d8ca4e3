"""The seed repository's dense algorithm, re-implemented as the benchmarks' baseline.

The seed (pytorch-mutual-information, ``MutualInformation.py``) scales images in [0, 1] by 255,
puts K bin centres on ``linspace(0, 255, K)`` and evaluates a Gaussian of std ``sigma`` (on that
0..255 scale) between every pixel and every bin: two dense ``(B, N, K)`` weight tensors, whose
mean gives the marginals and whose product ``W1^T W2`` gives the joint histogram. Autograd
differentiates through all of it, so forward and backward hold several ``B x N x K`` tensors.

Here the same computation takes the library's arguments: bin centres spread over
``value_range`` and ``sigma`` in bin widths. The kernel's argument ``(x - c) / std`` does not
change when data, centres and std are scaled together, so with ``value_range=(0, 1)`` and
``num_bins=256`` (bin width 1 on the 0..255 scale) this is the seed's number, epsilons included.
"""

import torch

EPS = 1e-10  # the seed's epsilon, in the normalisations and inside the logarithms


def gaussian_weights(x, centres, std):
    """(B, N, K): exp(-(x_n - c_k)^2 / (2 std^2)) for every pixel and every bin."""
    return torch.exp(-0.5 * ((x[..., None] - centres) / std) ** 2)


def entropy_bits(p, dims):
    return -(p * torch.log2(p + EPS)).sum(dims)


def seed_mutual_information(x, y, num_bins=256, sigma=0.4, value_range=(0.0, 1.0), normalize=False):
    """MI in bits of images (B, *) in ``value_range``, the seed's way; (B,).

    ``normalize=True`` gives the seed's ``2 I / (H(x) + H(y))``.
    """
    lo, hi = value_range
    centres = torch.linspace(lo, hi, num_bins, dtype=x.dtype, device=x.device)
    std = sigma * (hi - lo) / (num_bins - 1)
    w1 = gaussian_weights(x.flatten(1), centres, std)
    w2 = gaussian_weights(y.flatten(1), centres, std)

    p1 = w1.mean(1)
    p1 = p1 / (p1.sum(1, keepdim=True) + EPS)
    p2 = w2.mean(1)
    p2 = p2 / (p2.sum(1, keepdim=True) + EPS)
    joint = w1.transpose(1, 2) @ w2
    p12 = joint / (joint.sum((1, 2), keepdim=True) + EPS)

    h1, h2, h12 = entropy_bits(p1, 1), entropy_bits(p2, 1), entropy_bits(p12, (1, 2))
    mi = h1 + h2 - h12
    return 2 * mi / (h1 + h2) if normalize else mi


def dense_bytes(batch, numel, num_bins, itemsize=4):
    """Bytes of one dense (B, N, K) weight tensor: the unit of the peers' memory estimates."""
    return batch * numel * num_bins * itemsize
