"""Triton kernels against the dense float64 oracle.

Without a CUDA GPU every kernel runs in the Triton interpreter (TRITON_INTERPRET=1) on CPU
tensors; with one, on CUDA tensors. Tests marked ``gpu`` need real CUDA tensors.

Tolerance: |kernel - oracle| <= 1e-5 * max|oracle| (per output tensor). The truncated
window drops weights below 2**-24 of the peak, each weight is a float32 evaluation
(relative error a few 2**-24) and the float32 sums run over at most 1000 contributions
in any order; the errors observed are below 5e-7 of the max, so 1e-5 leaves a margin
without hiding a wrong bin or a missing window row (those are O(1) of the max).
"""

import math
import os

import torch

if not torch.cuda.is_available():  # must precede the first kernel definition
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib  # noqa: E402

import pytest  # noqa: E402
from oracle import dense_hist, dense_joint  # noqa: E402

import mi  # noqa: E402
from mi import kernels as mk  # noqa: E402

utils = importlib.import_module("mi.kernels.utils")  # the launch heuristics

pytestmark = pytest.mark.skipif(not mk.is_available(), reason=str(mk.unavailable_reason()))

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RTOL = 1e-5
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ---------------------------------------------------------------- inputs and helpers


def make_inputs(B, N, K, seed, with_m=True):
    """u, v in bin coordinates: spread over [-3, K + 2] (spilling both ends), with exact
    bin centres and half-way points (the box window's edges), far-away values, a peaked
    cluster (a black background) and, in m, some zero weights."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(B, N, generator=g) * (K + 5) - 3
    v = torch.rand(B, N, generator=g) * (K + 5) - 3
    special = torch.tensor([-1000.0, 1e6, -0.5, 0.0, 0.5, K - 1.0, K - 0.5, K - 1.5, 1.5, -2.0])
    if N >= 2 * len(special):
        u[:, : len(special)] = special
        v[:, len(special) : 2 * len(special)] = special.flip(0)
        v[:, : len(special)] = 0.25  # pairs the specials of u with an ordinary v
    if N >= 100:
        u[:, -40:] = 0.1  # peaked: many pixels in the same bins
        v[:, -40:] = 0.2
    m = None
    if with_m:
        m = torch.rand(B, N, generator=g)
        m[:, ::7] = 0.0
    to = lambda t: None if t is None else t.to(DEVICE)
    return to(u), to(v), to(m)


def assert_close(actual, expected, what):
    assert actual is not None, f"{what}: missing"
    assert actual.dtype == torch.float32, f"{what}: dtype {actual.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    actual = actual.detach().cpu().double()
    assert torch.isfinite(actual).all(), f"{what}: not finite (an output not written?)"
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= RTOL * scale + 1e-30, f"{what}: max error {err:.3g} > {RTOL} * {scale:.3g}"


def oracle_joint_grads(u, v, m, G, K, sigma, ku, kv):
    """(du, dv, dm) by autograd through the dense float64 formula; zeros where no path."""
    leaves = [t.detach().cpu().double().requires_grad_() if t is not None else None for t in (u, v, m)]
    J = dense_joint(*leaves, num_bins=K, sigma=sigma, kernel_u=ku, kernel_v=kv)
    if J.requires_grad:
        (J * G.cpu().double()).sum().backward()
    return [None if t is None else (t.grad if t.grad is not None else torch.zeros_like(t))
            for t in leaves]  # fmt: skip


def oracle_hist_grads(u, m, g, K, sigma, kernel):
    leaves = [t.detach().cpu().double().requires_grad_() if t is not None else None for t in (u, m)]
    H = dense_hist(*leaves, num_bins=K, sigma=sigma, kernel=kernel)
    if H.requires_grad:
        (H * g.cpu().double()).sum().backward()
    return [None if t is None else (t.grad if t.grad is not None else torch.zeros_like(t))
            for t in leaves]  # fmt: skip


@pytest.fixture(params=["scatter", "tiled"])
def method(request):
    """Both joint-histogram paths (``mi.kernels.forced_method``): the atomics and the tiles."""
    with mk.forced_method(request.param):
        yield request.param


def test_forced_method_blocks_that_overlap_end_their_own_parts():
    """forced_method is process-wide: two blocks that overlap without nesting (two threads,
    two asyncio tasks) each end their own part, and once both have ended the rule applies
    again (each used to restore what it found: the first entered's setting outlived both)."""
    rule = utils.joint_method("forward", 32)
    other = "scatter" if rule == "tiled" else "tiled"
    first, second = mk.forced_method(other), mk.forced_method("span")
    first.__enter__()
    second.__enter__()
    assert utils.joint_method("forward", 32) == "span"  # (the most recently entered)
    first.__exit__(None, None, None)
    assert utils.joint_method("forward", 32) == "span"
    second.__exit__(None, None, None)
    assert utils.joint_method("forward", 32) == rule
    with mk.forced_method(other):
        with pytest.raises(ValueError, match="method must be one of"):
            with mk.forced_method("fast"):
                pass
        assert utils.joint_method("forward", 32) == other
    assert utils.joint_method("forward", 32) == rule


@pytest.fixture
def nan_empty(monkeypatch):
    """Fresh outputs start as NaN, so a kernel that forgets to write a pixel fails loudly."""
    empty_like = torch.empty_like

    def nan_empty_like(t, *args, **kwargs):
        out = empty_like(t, *args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty_like", nan_empty_like)


# ---------------------------------------------------------------- the cases

PAIRS = [("gaussian", "gaussian"), ("bspline", "bspline"), ("box", "bspline")]
KS = [2, 5, 16, 64]
SIGMAS = [0.1, 0.4, 1.0, 2.5]
NS = [1, 37, 1000]


def _joint_cases():
    """Every pair x K (x sigma for the gaussian); N cycles through NS so each pair sees each N."""
    cases = []
    for ku, kv in PAIRS:
        sigmas = SIGMAS if ku == "gaussian" else [1.0]
        for K in KS:
            for sigma in sigmas:
                N = NS[len(cases) % len(NS)]
                cases.append(pytest.param(ku, kv, K, sigma, N, id=f"{ku}-{kv}-K{K}-s{sigma}-N{N}"))
    return cases


VARIANTS = [
    pytest.param(False, False, id="nom-float"),
    pytest.param(True, False, id="m-float"),
    pytest.param(False, True, id="nom-det"),
    pytest.param(True, True, id="m-det"),
]


@pytest.mark.parametrize("with_m, deterministic", VARIANTS)
@pytest.mark.parametrize("ku, kv, K, sigma, N", _joint_cases())
def test_joint_forward(ku, kv, K, sigma, N, with_m, deterministic, method):
    B = 2
    u, v, m = make_inputs(B, N, K, seed=K * 1000 + N, with_m=with_m)
    J = mk.joint_hist_forward(u, v, m, K, sigma, ku, kv, deterministic=deterministic)
    assert_close(J, dense_joint(u.cpu(), v.cpu(), None if m is None else m.cpu(), K, sigma, ku, kv), "J")
    if deterministic:
        again = mk.joint_hist_forward(u, v, m, K, sigma, ku, kv, deterministic=True)
        assert torch.equal(J, again), "deterministic forward is not bitwise reproducible"


@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.5])
def test_gaussian_disk_drops_only_float32_dust(sigma):
    """Two Gaussian windows skip the cells below 2**-24 of the pixel's largest (for pixels
    inside the bins, the window's corners): the total mass matches the dense oracle to 1e-6,
    bins to 1e-6 of the largest."""
    K, N = 64, 1500
    g = torch.Generator().manual_seed(4)
    u, v = (torch.rand(2, N, generator=g) * 50 + 7 for _ in range(2))  # no mass past the edges
    ref = dense_joint(u, v, None, K, sigma)
    with mk.forced_method("scatter"):  # the tiled path keeps the whole square (tested with the rest)
        J = mk.joint_hist_forward(u.to(DEVICE), v.to(DEVICE), None, K, sigma).cpu().double()
    assert (J.sum((1, 2)) / ref.sum((1, 2)) - 1).abs().max().item() < 1e-6
    assert (J - ref).abs().max().item() < 1e-6 * ref.abs().max().item()


@pytest.mark.parametrize("with_m", [False, True])
def test_tails_far_outside_the_range(with_m, method):
    """Every pixel 4-8 sigma outside the bins: the histogram is all window tails (each cell
    below 2**-24 of a Gaussian's peak, which the scatter path once dropped as dust) and must
    still match the dense oracle, bin by bin, as when most of an image lies outside a fixed
    value_range."""
    K, N, sigma = 16, 3000, 1.0
    g = torch.Generator().manual_seed(6)
    u = -4.0 - 4.0 * torch.rand(2, N, generator=g)
    v = K - 1 + 4.0 + 4.0 * torch.rand(2, N, generator=g)
    m = torch.rand(2, N, generator=g) if with_m else None
    ref = dense_joint(u, v, m, K, sigma)
    J = mk.joint_hist_forward(u.to(DEVICE), v.to(DEVICE), None if m is None else m.to(DEVICE), K, sigma)
    assert_close(J, ref, "J")


def test_one_bin_windows_take_the_nearest_bin(method):
    """Below sigma 0.087 (r = 5.77 sigma < 1/2) a sample's window is one bin: the nearest. With
    every sample between centres (0.3-0.45 or 0.55-0.7 past one) the histogram is all such
    sub-2**-24 weights; the window once sat on the first bin above u - r, the farther one for
    a sample below the half-way point (all mass one bin off on the torch backend and in the
    Triton histogram; an empty joint histogram on the scatter path, whose cut is relative
    to the nearest bin)."""
    K, N, sigma = 8, 400, 0.06
    g = torch.Generator().manual_seed(8)
    frac = 0.3 + 0.15 * torch.rand(2, N, generator=g) + 0.25 * (torch.rand(2, N, generator=g) > 0.5)
    u = torch.randint(0, K - 1, (2, N), generator=g) + frac
    v = torch.randint(0, K - 1, (2, N), generator=g) + frac.flip(1)
    ref = dense_joint(u, v, None, K, sigma)
    assert_close(mk.joint_hist_forward(u.to(DEVICE), v.to(DEVICE), None, K, sigma), ref, "J")
    assert_close(mk.hist_forward(u.to(DEVICE), None, K, sigma), dense_hist(u, None, K, sigma), "h")
    torch_joint = mi._torch.joint_hist_forward(u, v, None, K, sigma, "gaussian", "gaussian")
    assert_close(torch_joint.float(), ref, "J (torch backend)")


@pytest.mark.parametrize("sigma", [0.064, 0.1, 0.3, 1.0])
def test_gaussian_windows_hold_the_same_bins_on_every_path(sigma, method):
    """Both Triton paths keep the Gaussian on each sample's W-bin window, as the torch backend
    does: no cell of J is non-zero that is zero there (the tiled sum once kept the float32
    dust beyond the window, down to 1e-43; the scatter path also drops the window's corners
    below 2**-24 of the pixel's largest cell), the values agree, and a near-one-bin histogram (every x on
    a bin centre, every y 0.1 bins from one) has finite normalised-score gradients equal to
    the torch backend's, where the tiled path's were NaN below sigma 0.09. Samples on bin
    centres, between them, at the range's edges and beyond them."""
    K, N = 8, 300
    g = torch.Generator().manual_seed(int(sigma * 1000))
    u = torch.cat([torch.arange(K).repeat(8) + 0.0, -3 + (K + 5) * torch.rand(N - 8 * K, generator=g)])
    v = torch.cat([torch.arange(K).repeat(8) + 0.9, -3 + (K + 5) * torch.rand(N - 8 * K, generator=g)])
    u, v = u.reshape(2, N // 2), v.reshape(2, N // 2)
    J = mk.joint_hist_forward(u.to(DEVICE), v.to(DEVICE), None, K, sigma).cpu()
    ref = mi._torch.joint_hist_forward(u, v, None, K, sigma, "gaussian", "gaussian").float()
    beyond = (J > 0) & (ref == 0)
    assert not beyond.any(), f"{beyond.sum()} cells beyond the windows, largest {J[beyond].max():.3g}"
    assert_close(J, ref.double(), "J")
    for norm in ("arithmetic", "studholme"):
        grads = []
        for backend in ("triton", "torch"):
            x = torch.zeros(3, 1, 1, device=DEVICE if backend == "triton" else "cpu", requires_grad=True)
            y = torch.full_like(x, 0.9).requires_grad_()
            kw = dict(num_bins=2, sigma=sigma, value_range=(0, 1), normalize=norm, backend=backend)
            grads.append(torch.autograd.grad(mi.mutual_information(x, y, **kw).sum(), (x, y)))
        for got, want in zip(*grads):
            assert torch.isfinite(got).all() and torch.allclose(got.cpu(), want, rtol=1e-4, atol=1e-6), (
                got,
                want,
            )


@pytest.mark.parametrize("with_m", [pytest.param(False, id="nom"), pytest.param(True, id="m")])
@pytest.mark.parametrize("ku, kv, K, sigma, N", _joint_cases())
def test_joint_backward(ku, kv, K, sigma, N, with_m, nan_empty, method):
    B = 2
    u, v, m = make_inputs(B, N, K, seed=K * 1000 + N + 1, with_m=with_m)
    G = torch.randn(B, K, K, generator=torch.Generator().manual_seed(N)).to(DEVICE)
    du, dv, dm = mk.joint_hist_backward(G, u, v, m, K, sigma, ku, kv, needs_m=True)
    ru, rv, rm = oracle_joint_grads(u, v, m, G, K, sigma, ku, kv)
    assert_close(du, ru, "du")
    assert_close(dv, rv, "dv")
    if m is None:
        assert dm is None
    else:
        assert_close(dm, rm, "dm")


def _hist_cases():
    cases = []
    for kernel in ("gaussian", "bspline", "box"):
        sigmas = SIGMAS if kernel == "gaussian" else [1.0]
        for K in KS:
            for sigma in sigmas:
                N = NS[len(cases) % len(NS)]
                cases.append(pytest.param(kernel, K, sigma, N, id=f"{kernel}-K{K}-s{sigma}-N{N}"))
    # W = 80 > MAX_BLOCK_W: the window is walked in chunks (of 32), as the joint's
    cases.append(pytest.param("gaussian", 80, 8.0, 50, id="gaussian-K80-s8.0-N50"))
    return cases


@pytest.mark.parametrize("with_m, deterministic", VARIANTS)
@pytest.mark.parametrize("kernel, K, sigma, N", _hist_cases())
def test_hist_forward(kernel, K, sigma, N, with_m, deterministic):
    B = 3
    u, _, m = make_inputs(B, N, K, seed=K * 100 + N, with_m=with_m)
    H = mk.hist_forward(u, m, K, sigma, kernel, deterministic=deterministic)
    assert_close(H, dense_hist(u.cpu(), None if m is None else m.cpu(), K, sigma, kernel), "H")
    if deterministic:
        assert torch.equal(H, mk.hist_forward(u, m, K, sigma, kernel, deterministic=True))


@pytest.mark.parametrize("with_m", [pytest.param(False, id="nom"), pytest.param(True, id="m")])
@pytest.mark.parametrize("kernel, K, sigma, N", _hist_cases())
def test_hist_backward(kernel, K, sigma, N, with_m, nan_empty):
    B = 3
    u, _, m = make_inputs(B, N, K, seed=K * 100 + N + 1, with_m=with_m)
    g = torch.randn(B, K, generator=torch.Generator().manual_seed(N)).to(DEVICE)
    du, dm = mk.hist_backward(g, u, m, K, sigma, kernel, needs_m=True)
    ru, rm = oracle_hist_grads(u, m, g, K, sigma, kernel)
    assert_close(du, ru, "du")
    if m is None:
        assert dm is None
    else:
        assert_close(dm, rm, "dm")


@pytest.mark.parametrize(
    "ku, kv, K, sigma, N",
    [
        pytest.param("gaussian", "box", 16, 0.7, 100, id="gaussian-box-K16-s0.7-N100"),
        pytest.param("bspline", "gaussian", 16, 0.7, 100, id="bspline-gaussian-K16-s0.7-N100"),
        pytest.param("box", "box", 16, 0.7, 100, id="box-box-K16-s0.7-N100"),
        # the compatibility windows (mi.compat): kornia's (radius sigma), MONAI's b-spline pair
        pytest.param("xu", "xu", 16, 1.0, 100, id="xu-xu-K16-R1-N100"),
        pytest.param("xu", "xu", 16, 2.3, 100, id="xu-xu-K16-R2.3-N100"),
        pytest.param("tgauss", "tgauss", 16, 1.5, 100, id="tgauss-tgauss-K16-R1.5-N100"),
        pytest.param("rect", "rect", 16, 1.0, 100, id="rect-rect-K16-R1-N100"),
        pytest.param("bspline", "nearest", 16, 0.7, 100, id="bspline-nearest-K16-N100"),
        # W = min(2 * 47 + 1, 80) = 80 > MAX_BLOCK_W: the window is walked in chunks (of 32)
        pytest.param("gaussian", "gaussian", 80, 8.0, 50, id="gaussian-gaussian-K80-s8.0-N50"),
        # the tiled path's largest forward (K padded to 128; its backward is the scatter gather),
        # and a K padded to the next power of two (23 -> 32)
        pytest.param("gaussian", "gaussian", 128, 1.0, 301, id="gaussian-gaussian-K128-s1.0-N301"),
        pytest.param("bspline", "bspline", 23, 1.0, 77, id="bspline-bspline-K23-N77"),
    ],
)
def test_joint_other_pairs_and_wide_windows(ku, kv, K, sigma, N, method):
    u, v, m = make_inputs(2, N, K, seed=21)
    ref = dense_joint(u.cpu(), v.cpu(), m.cpu(), K, sigma, ku, kv)
    for det in (False, True):
        J = mk.joint_hist_forward(u, v, m, K, sigma, ku, kv, deterministic=det)
        assert_close(J, ref, f"J det={det}")
    G = torch.randn(2, K, K, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    got = mk.joint_hist_backward(G, u, v, m, K, sigma, ku, kv, needs_m=True)
    for a, b, name in zip(got, oracle_joint_grads(u, v, m, G, K, sigma, ku, kv), "uvm"):
        assert_close(a, b, f"d{name}")
    if ku == kv == "gaussian":  # the 1-D kernels walk the same chunks
        H = mk.hist_forward(u, m, K, sigma)
        assert_close(H, dense_hist(u.cpu(), m.cpu(), K, sigma), "H")
        g = G[:, 0]
        got = mk.hist_backward(g, u, m, K, sigma, needs_m=True)
        for a, b, name in zip(got, oracle_hist_grads(u, m, g, K, sigma, "gaussian"), "um"):
            assert_close(a, b, f"d{name}")


# ---------------------------------------------------------------- launcher behaviour


@pytest.mark.parametrize(
    "needs_u, needs_v, needs_m",
    [(True, False, False), (False, True, False), (False, False, True), (False, False, False)],
    ids=["u", "v", "m", "none"],
)
def test_joint_backward_only_what_is_needed(needs_u, needs_v, needs_m, nan_empty, method):
    K, sigma = 8, 0.7
    u, v, m = make_inputs(2, 50, K, seed=3)
    G = torch.randn(2, K, K).to(DEVICE)
    out = mk.joint_hist_backward(G, u, v, m, K, sigma, needs_u=needs_u, needs_v=needs_v,
                                 needs_m=needs_m)  # fmt: skip
    ref = oracle_joint_grads(u, v, m, G, K, sigma, "gaussian", "gaussian")
    for got, want, needed, name in zip(out, ref, (needs_u, needs_v, needs_m), "uvm"):
        if needed:
            assert_close(got, want, f"d{name}")
        else:
            assert got is None, f"d{name} computed though not needed"


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # d*d of 3e38 -> inf
def test_far_outside_only(method):
    """Every pixel far outside the range: all-zero histogram, zero gradients, no NaN."""
    K = 16
    u = torch.tensor([[-1000.0, 1e6, -3e38, 3e38, -40.0]], device=DEVICE)
    v = torch.tensor([[1e6, -1000.0, 3e38, 0.0, 5.0]], device=DEVICE)
    for det in (False, True):
        J = mk.joint_hist_forward(u, v, None, K, 1.0, deterministic=det)
        assert J.abs().max().item() == 0.0 and torch.isfinite(J).all()
    du, dv, _ = mk.joint_hist_backward(torch.ones(1, K, K, device=DEVICE), u, v, None, K, 1.0)
    assert torch.isfinite(du).all() and torch.isfinite(dv).all()
    assert du.abs().max().item() == 0.0


def test_a_triton_older_than_the_kernels_need_is_refused_by_name(monkeypatch):
    """Triton 3.3's compiler refuses the kernels and 3.1's interpreter gave wrong histograms:
    below ``MIN_TRITON`` the kernels are unavailable, ``backend="triton"`` says why, and the
    public functions' other backend still works."""
    import triton

    assert [mk._version(t) for t in ("3.1.0", "3.2.0+git4a1f", "3.10.1", "junk")] == [
        (3, 1), (3, 2), (3, 10), (0, 0)
    ]  # fmt: skip
    x, y = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)
    monkeypatch.setattr(triton, "__version__", "3.3.1")
    mk.unavailable_reason.cache_clear()
    try:
        assert not mk.is_available()
        assert "Triton >= 3.4, found 3.3.1" in mk.unavailable_reason()
        with pytest.raises(ValueError, match=r"backend='triton': .*Triton >= 3\.4, found 3\.3\.1"):
            mi.mutual_information(x, y, backend="triton")
        with pytest.raises(RuntimeError, match=r"found 3\.3\.1"):
            mk.joint_hist_forward(x.reshape(1, -1), y.reshape(1, -1), None, 8, 1.0)
        assert torch.isfinite(mi.mutual_information(x, y, backend="torch")).all()
    finally:
        monkeypatch.undo()
        mk.unavailable_reason.cache_clear()
    assert mk.is_available()


def test_interpreter_scalars_index_as_triton_3_9s(monkeypatch):
    """Triton 3.6's interpreter makes ``tl.tensor.__index__`` read a scalar's one-element
    array as it is, which NumPy 2.4 refuses (the persistent kernels' ``range(program_id,
    ...)``): ``window._patch_interpreter_index`` follows that patch with a squeeze. Here the
    old patch is one that refuses a one-element array whatever the NumPy (``operator.index``)."""
    import operator

    import numpy as np
    from mi.kernels import window
    from triton.runtime import interpreter

    def old_patch(tensor, scope):
        scope.set_attr(tensor, "__index__", lambda self: operator.index(self.handle.data))

    class Scope:  # as the interpreter's: records what it sets, to undo it after the launch
        def __init__(self):
            self.changes = []

        def set_attr(self, obj, name, value):
            self.changes.append((obj, name, obj.__dict__.get(name)))
            setattr(obj, name, value)

    class Tensor:
        def __init__(self, value):
            self.handle = type("Handle", (), {"data": np.array([value], dtype=np.int32)})()

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", old_patch)
    interpreter._patch_lang_tensor(Tensor, Scope())
    with pytest.raises(TypeError):
        range(Tensor(3), 5)
    window._patch_interpreter_index()
    scope = Scope()
    interpreter._patch_lang_tensor(Tensor, scope)
    assert list(range(Tensor(3), 6, Tensor(2))) == [3, 5]
    assert [name for _, name, _ in scope.changes] == ["__index__", "__index__"]  # undone in order


def test_torch_deterministic_mode_is_honoured(method):
    K = 16
    u, v, m = make_inputs(2, 200, K, seed=5)
    det = mk.joint_hist_forward(u, v, m, K, 0.4, deterministic=True)
    torch.use_deterministic_algorithms(True)
    try:
        assert utils.use_deterministic(False)
        assert torch.equal(mk.joint_hist_forward(u, v, m, K, 0.4), det)
        assert torch.equal(mk.hist_forward(u, m, K, 0.4), mk.hist_forward(u, m, K, 0.4, deterministic=True))
    finally:
        torch.use_deterministic_algorithms(False)


def test_fixed_point_error_bound():
    """The deterministic forward rounds each contribution m w_u w_v (at most 1 after m is
    multiplied by 1 / max|m|) to a multiple of 2**-bits and sums integers: each bin is within
    (its count) * 2**-(bits + 1) * max|m| of the exact sum of the float32 contributions, so
    within N max|m| 2**-bits, before the float32 result's own rounding (half a unit of the
    bin's value, 2**-24 relative). Box windows make the float32 contributions exact to write
    down (weights 1 at the bin centres): m n / max|m| rounded once, times max|m|. The bound
    fails for fewer than ~26 fraction bits, whose error would exceed the float32 rounding."""
    K, N = 16, 5000
    g = torch.Generator().manual_seed(9)
    u = torch.randint(0, K, (2, N), generator=g).float()
    v = torch.randint(0, K, (2, N), generator=g).float()
    m = torch.rand(2, N, generator=g) * 1e4
    with mk.forced_method("scatter"):  # fixed point is the scatter path's determinism
        J = mk.joint_hist_forward(
            u.to(DEVICE), v.to(DEVICE), m.to(DEVICE), K, 1.0, "box", "box", deterministic=True
        )
    bits = utils.fixed_point_bits(N)
    m_mul = 1.0 / m.amax(1, keepdim=True)  # the launcher's float32 multiplier
    contrib = (m * m_mul).double() / m_mul.double()  # the float32 contributions, exactly
    flat = (torch.arange(2)[:, None] * K + u.long()) * K + v.long()
    exact = torch.zeros(2 * K * K, dtype=torch.float64).index_add_(0, flat.reshape(-1), contrib.reshape(-1))
    count = torch.zeros(2 * K * K, dtype=torch.float64).index_add_(
        0, flat.reshape(-1), torch.ones(2 * N).double()
    )
    err = (J.cpu().double().reshape(-1) - exact).abs()
    per_bin = count * 2.0 ** -(bits + 1) * m.amax().item() + exact.abs() * 2.0**-24
    assert bool((err <= per_bin).all()), f"{(err / per_bin).max().item():.3g} of the per-bin bound"
    assert bits == 32 and utils.fixed_point_bits(2**31) == 31


def test_non_contiguous_inputs(method):
    K = 8
    base = torch.rand(300, 2, device=DEVICE) * K
    u, v = base.t(), base.flip(1).t()  # (2, 300) views, not contiguous
    assert not u.is_contiguous()
    J = mk.joint_hist_forward(u, v, None, K, 0.5)
    assert_close(J, dense_joint(u.cpu(), v.cpu(), None, K, 0.5), "J")


def test_bad_inputs():
    u = torch.rand(2, 10, device=DEVICE)
    with pytest.raises(TypeError, match="float32"):
        mk.joint_hist_forward(u.double(), u.double(), None, 8, 1.0)
    with pytest.raises(ValueError, match="shape"):
        mk.joint_hist_forward(u, u[:, :5], None, 8, 1.0)
    with pytest.raises(ValueError, match="kernel"):
        mk.hist_forward(u, None, 8, 1.0, kernel="triangle")
    with pytest.raises(ValueError, match="num_bins"):
        mk.hist_forward(u, None, 1, 1.0)


def test_empty(method):
    u = torch.zeros(2, 0, device=DEVICE)
    assert mk.joint_hist_forward(u, u, None, 4, 1.0).abs().sum().item() == 0.0
    assert mk.hist_forward(u, None, 4, 1.0).shape == (2, 4)


# ---------------------------------------------------------------- raw samples mapped in the kernels


def make_mapped(B, N, seed, dtype, shared):
    """Raw samples and their row ranges: row 0 spills past its range on both sides, the last
    row is constant in x (lo == hi: lands on ``first``); ``shared``: one (1, 2) range for all."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, N, generator=g) * 9.0 - 2.0
    y = torch.randn(B, N, generator=g) * 3.0 + 1.0
    x[-1] = 0.75
    rx = torch.stack([x.amin(1), x.amax(1)], 1)
    ry = torch.stack([y.amin(1), y.amax(1)], 1)
    rx[0] = torch.tensor([-1.0, 5.0])
    if shared:
        rx, ry = torch.tensor([[-1.0, 5.0]]), torch.tensor([[-4.0, 6.0]])
    m = torch.rand(B, N, generator=g)
    m[:, ::5] = 0.0
    x, y = x.to(dtype), y.to(dtype)
    return [t.to(DEVICE) for t in (x, y, m, rx, ry)]


@pytest.mark.parametrize("shared", [False, True], ids=["row-ranges", "one-range"])
def test_more_rows_than_one_launch_holds(shared, method, monkeypatch):
    """More rows than grid axis 1 takes (65535: local MI's patches of a volume) run as
    several launches: the same numbers, bit for bit (here the limit is lowered to 3 rows)."""
    x, y, m, rx, ry = make_mapped(8, 40, 11, torch.float32, shared)
    kw = dict(ranges=(rx, ry), first=0.0, length=15.0)
    G = torch.randn(8, 16, 16, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    g = torch.randn(8, 16, generator=torch.Generator().manual_seed(3)).to(DEVICE)

    def run():
        return (
            mk.joint_hist_forward(x, y, m, 16, 0.7, **kw),
            *mk.joint_hist_backward(G, x, y, m, 16, 0.7, needs_m=True, **kw),
            mk.hist_forward(x, m, 16, 0.7, ranges=(rx,), first=0.0, length=15.0),
            *mk.hist_backward(g, x, None, 16, 0.7, ranges=(rx,), first=0.0, length=15.0),
        )

    whole = run()
    monkeypatch.setattr(utils, "MAX_ROWS", 3)
    chunked = run()
    for a, b in zip(whole, chunked):
        assert (a is None and b is None) or torch.equal(a, b)
    with pytest.raises(ValueError, match="at most 3 rows per launch"):
        utils.check_inputs(x, None, 16, 0.7)


def to_bins(x, r, first, length):
    """The kernels' map in float64: (x - lo) * length / (hi - lo) + first (a constant row: x - lo + first)."""
    lo, hi = r.double()[:, :1], r.double()[:, 1:]
    span = hi - lo
    return (x - lo) * torch.where(span > 0, length / torch.where(span > 0, span, 1.0), 1.0) + first


def check_grad(actual, expected, what, dtype):
    """As assert_close, for gradients stored in the samples' dtype: the float32 bound, plus for
    half precision one unit in the last place of the largest gradient (the rounding to the
    dtype: below half a unit on a GPU, below one where the interpreter truncates float32 ->
    bfloat16; measured 0.5 unit in float16 and 0.996 in bfloat16)."""
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype} != {dtype}"
    top = expected.abs().max().item()
    ulp = 0.0
    if dtype != torch.float32:
        bits = {torch.float16: 10, torch.bfloat16: 7}[dtype]
        ulp = 2.0 ** (math.floor(math.log2(top)) - bits)
    err = (actual.cpu().double() - expected).abs().max().item()
    assert err <= RTOL * top + ulp + 1e-30, f"{what}: max error {err:.3g} (one unit: {ulp:.3g})"


MAPPED = [
    pytest.param(torch.float32, False, id="fp32-rows"),
    pytest.param(torch.float32, True, id="fp32-shared"),
    pytest.param(torch.float16, False, id="fp16-rows"),
    pytest.param(torch.bfloat16, True, id="bf16-shared"),
]


@pytest.mark.parametrize("dtype, shared", MAPPED)
@pytest.mark.parametrize("ku, kv, K, sigma, first, length", [
    ("gaussian", "gaussian", 16, 0.7, 0.0, 15.0), ("bspline", "bspline", 12, 1.0, 1.0, 9.0),
])  # fmt: skip
def test_joint_mapped(ku, kv, K, sigma, first, length, dtype, shared, method):
    """MAP: raw samples and row ranges in, mapped in registers; gradients w.r.t. the raw samples."""
    x, y, m, rx, ry = make_mapped(3, 301, 5, dtype, shared)
    bins = dict(ranges=(rx, ry), first=first, length=length)
    xd, yd = (t.detach().cpu().double().requires_grad_() for t in (x, y))
    u, v = to_bins(xd, rx.cpu(), first, length), to_bins(yd, ry.cpu(), first, length)
    ref = dense_joint(u, v, m.cpu(), K, sigma, ku, kv)
    for det in (False, True):
        assert_close(mk.joint_hist_forward(x, y, m, K, sigma, ku, kv, deterministic=det, **bins), ref, "J")
    G = torch.randn(3, K, K, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    (ref * G.cpu().double()).sum().backward()
    dx, dy, _ = mk.joint_hist_backward(G, x, y, m, K, sigma, ku, kv, **bins)
    check_grad(dx, xd.grad, "dx", dtype)
    check_grad(dy, yd.grad, "dy", dtype)


@pytest.mark.parametrize("dtype, shared", MAPPED)
def test_hist_mapped(dtype, shared):
    x, _, m, rx, _ = make_mapped(3, 301, 6, dtype, shared)
    K, sigma = 16, 0.6
    xd = x.detach().cpu().double().requires_grad_()
    ref = dense_hist(to_bins(xd, rx.cpu(), 0.0, K - 1.0), m.cpu(), K, sigma)
    assert_close(mk.hist_forward(x, m, K, sigma, ranges=(rx,), length=K - 1.0), ref, "H")
    g = torch.randn(3, K, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    (ref * g.cpu().double()).sum().backward()
    dx, _ = mk.hist_backward(g, x, m, K, sigma, ranges=(rx,), length=K - 1.0)
    check_grad(dx, xd.grad, "dx", dtype)


def test_mapped_range_errors():
    x = torch.rand(2, 10, device=DEVICE)
    with pytest.raises(ValueError, match="range"):
        mk.joint_hist_forward(x, x, None, 8, 1.0, ranges=(torch.zeros(3, 2, device=DEVICE),) * 2)
    with pytest.raises(ValueError, match="2 tensors"):
        mk.joint_hist_forward(x, x, None, 8, 1.0, ranges=(torch.zeros(1, 2, device=DEVICE),))


PUBLIC = [
    pytest.param(dict(), id="auto"),
    pytest.param(dict(value_range=(0.1, 0.8)), id="fixed"),
    pytest.param(dict(value_range=((0.0, 1.0), "auto"), mask=True), id="mixed-mask"),
    pytest.param(dict(per_channel=True, normalize="studholme"), id="per-channel"),
    pytest.param(dict(kernel="bspline", num_bins=16), id="bspline"),
    pytest.param(dict(kernel="mattes", num_bins=20, mask=True), id="mattes"),
    pytest.param(dict(dtype=torch.float16), id="fp16"),
]


@pytest.mark.parametrize("kw", PUBLIC)
def test_public_api_triton_matches_torch(kw, method):
    """The whole call (ranges, masks, maps in the kernels, entropies) on both backends."""
    kw = dict(kw)
    dtype = kw.pop("dtype", torch.float32)
    g = torch.Generator().manual_seed(8)
    x = torch.rand(2, 2, 17, 19, generator=g)
    y = (torch.sin(3 * x) ** 2 + 0.1 * torch.rand(2, 2, 17, 19, generator=g)).to(dtype)
    x = x.to(dtype)
    if kw.pop("mask", False):
        kw["mask"] = (torch.rand(2, 1, 17, 19, generator=g) > 0.3).to(DEVICE)
    out = {}
    for backend in ("torch", "triton"):
        xx, yy = x.to(DEVICE).requires_grad_(), y.to(DEVICE).requires_grad_()
        score = mi.mutual_information(xx, yy, backend=backend, **{"num_bins": 24, **kw})
        score.sum().backward()
        out[backend] = score, xx.grad, yy.grad
    # Both backends do the same float32 math on the same samples (half ones are read as they
    # are): measured 7e-7 of the largest value apart in float32 and 0 in float16; bound 1e-5.
    for a, b in zip(out["triton"], out["torch"]):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=0, atol=1e-5 * b.abs().max().item())


def test_histograms_triton_matches_torch():
    g = torch.Generator().manual_seed(9)
    x = (torch.rand(3, 200, generator=g) * 255).to(DEVICE)
    y = (x * 0.5 + 40).to(DEVICE)
    bins = torch.linspace(0, 255, 32)
    for fn, args in ((mi.histogram, (x,)), (mi.histogram2d, (x, y))):
        a, b = (fn(*args, bins, 6.0, backend=be) for be in ("triton", "torch"))
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-4, atol=1e-7)


def test_window_sizes():
    assert utils.window_size("gaussian", 256, 0.4) == 5  # ceil(2 * 5.77 * 0.4)
    assert utils.window_size("gaussian", 256, 4.0) == 47
    assert utils.window_size("gaussian", 5, 2.5) == 5  # capped at K
    assert utils.window_size("bspline", 3, 1.0) == 3
    assert utils.window_size("box", 64, 1.0) == 1
    assert utils.window_size("xu", 64, 1.0) == 3  # |d| <= 1: kornia takes the slope at the ends
    assert utils.window_size("rect", 64, 1.0) == 3  # |d| <= 1 (and half a bin of margin)
    assert utils.window_size("nearest", 64, 1.0) == 2  # a tie touches two bins
    with pytest.raises(ValueError, match="kernel"):
        utils.window_size("triangle", 64, 1.0)
    for w in (1, 4, 5, 47, 93, 256):
        bn, bw, _ = utils.block_sizes(w)
        # the whole window in one block up to MAX_BLOCK_W, else chunks of CHUNK_W
        assert bw >= w if w <= utils.MAX_BLOCK_W else bw == utils.CHUNK_W
        assert bn * bw <= 4 * utils.TILE_ELEMENTS


# ---------------------------------------------------------------- the span forward (any K)


@pytest.mark.parametrize("ku, kv, K, sigma, N", _joint_cases())
def test_span_forward(ku, kv, K, sigma, N):
    """forced_method("span"): the span forward against the dense oracle on the joint cases
    (samples spilling past both ends, far-away values, zero weights; no mask where N is 37);
    "span-sorted" (the pixels sorted by tile first) where N is 1000. Its backward is the
    scatter gather (tested above)."""
    u, v, m = make_inputs(2, N, K, seed=K * 1000 + N, with_m=N != 37)
    with mk.forced_method("span-sorted" if N == 1000 else "span"):
        J = mk.joint_hist_forward(u, v, m, K, sigma, ku, kv)
    assert_close(J, dense_joint(u.cpu(), v.cpu(), None if m is None else m.cpu(), K, sigma, ku, kv), "J")


@pytest.mark.parametrize("method", ["span", "span-sorted"])
@pytest.mark.parametrize("smooth", [True, False], ids=["smooth", "noise"])
@pytest.mark.parametrize(
    "ku, kv, K, sigma", [("gaussian", "gaussian", 256, 0.5), ("bspline", "bspline", 256, 1.0),
                         ("box", "bspline", 100, 1.0), ("gaussian", "gaussian", 48, 2.5)],
)  # fmt: skip
def test_span_forward_many_bins(ku, kv, K, sigma, smooth, method):
    """K beyond what the tiled path holds in registers: a smooth row (neighbouring pixels in
    neighbouring bins: blocks of one sub-tile) and noise (blocks spanning every sub-tile),
    raw samples mapped in the kernel, a mask with zero runs (blocks with no weight)."""
    n = 1500 if smooth else 300  # (a block of noise walks (K / T)^2 sub-tiles: slow in the interpreter)
    g = torch.Generator().manual_seed(K)
    t = torch.linspace(0.0, 1.0, n)
    if smooth:
        x = torch.stack([0.5 + 0.45 * torch.sin(7 * t), 0.3 + 0.3 * t])
        y = torch.stack([0.5 + 0.45 * torch.cos(5 * t), 0.9 - 0.2 * t * t])
    else:
        x, y = torch.rand(2, n, generator=g), torch.rand(2, n, generator=g)
    # on a grid of 2**-12, so that the kernel's float32 map (x / 2) (2 (K - 1)) is exact: at 256
    # bins and sigma 0.5 rounding the map would move J by 1e-5 of its peak, on either path
    x, y = (torch.round(t * 4096) / 4096 for t in (x, y))
    m = torch.rand(2, n, generator=g)
    m[:, 100:250] = 0.0
    r = torch.tensor([[0.0, 1.0]])
    bins = dict(ranges=(r.to(DEVICE), r.to(DEVICE)), first=0.0, length=K - 1.0)
    with mk.forced_method(method):
        J = mk.joint_hist_forward(x.to(DEVICE), y.to(DEVICE), m.to(DEVICE), K, sigma, ku, kv, **bins)
        if smooth:
            again = mk.joint_hist_forward(x.to(DEVICE), y.to(DEVICE), m.to(DEVICE), K, sigma, ku, kv, **bins)
            assert torch.equal(J, again), "the span forward is not bitwise reproducible"
    u, v = to_bins(x.double(), r, 0.0, K - 1.0), to_bins(y.double(), r, 0.0, K - 1.0)
    assert_close(J, dense_joint(u, v, m, K, sigma, ku, kv), "J")


# ---------------------------------------------------------------- the gaussian's exp2 on the FMA units


if mk.is_available():
    import triton
    import triton.language as tl

    _exp2_fma = importlib.import_module("mi.kernels.tiled")._exp2_fma

    @triton.jit
    def _exp2_fma_kernel(p_x, p_y, N, BLOCK: tl.constexpr):
        o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(p_x + o, mask=o < N, other=0.0)
        tl.store(p_y + o, _exp2_fma(x), mask=o < N)


def test_exp2_fma_accuracy():
    """``tiled._exp2_fma`` against float64 2**x: within 3e-7 relative on [-125, 0] (ex2.approx
    is about 2**-22), 0 below (2**-125 is 2e-38), at -inf and at NaN."""
    tail = [-125.0, -130.0, -1e30, -math.inf, math.nan]
    x = torch.cat([torch.linspace(-124.99, 0.0, 200001), torch.tensor(tail)]).to(DEVICE)
    y = torch.empty_like(x)
    _exp2_fma_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
    want = torch.exp2(x[: -len(tail)].double())
    rel = ((y[: -len(tail)].double() - want).abs() / want).max().item()
    assert rel <= 3e-7, rel
    assert y[-len(tail) :].abs().max().item() == 0.0


@pytest.fixture
def exp_on_fma():
    saved = dict(utils.TILED_EXP)
    utils.TILED_EXP.update(forward="fma", backward="fma")
    yield
    utils.TILED_EXP.update(saved)


@pytest.mark.parametrize("method", ["tiled", "span"])
@pytest.mark.parametrize("K, sigma", [(16, 0.4), (64, 1.0), (37, 2.5)])
def test_exp_on_fma(K, sigma, method, exp_on_fma):
    """The tiled kernels and the span forward with TILED_EXP "fma" against the dense oracle
    (gaussian; "span"'s backward is the scatter gather, which has no such option), samples
    far outside included (w' must be 0 there, not NaN)."""
    u, v, m = make_inputs(2, 301, K, seed=K)
    G = torch.randn(2, K, K, generator=torch.Generator().manual_seed(K)).to(DEVICE)
    with mk.forced_method(method):
        J = mk.joint_hist_forward(u, v, m, K, sigma)
        got = mk.joint_hist_backward(G, u, v, m, K, sigma, needs_m=True)
    assert_close(J, dense_joint(u.cpu(), v.cpu(), m.cpu(), K, sigma), "J")
    for a, b, name in zip(got, oracle_joint_grads(u, v, m, G, K, sigma, "gaussian", "gaussian"), "uvm"):
        assert_close(a, b, f"d{name}")


# ---------------------------------------------------------------- real GPU only


@gpu
@needs_cuda
@pytest.mark.parametrize("ku, kv", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_gpu_medium_against_oracle(ku, kv):
    K, sigma, B, N = 64, 1.3, 2, 20000
    u, v, m = make_inputs(B, N, K, seed=11)
    ref = dense_joint(u.cpu(), v.cpu(), m.cpu(), K, sigma, ku, kv)
    for det in (False, True):
        assert_close(mk.joint_hist_forward(u, v, m, K, sigma, ku, kv, deterministic=det), ref, "J")
    G = torch.randn(B, K, K, device=DEVICE)
    got = mk.joint_hist_backward(G, u, v, m, K, sigma, ku, kv, needs_m=True)
    for a, b, name in zip(got, oracle_joint_grads(u, v, m, G, K, sigma, ku, kv), "uvm"):
        assert_close(a, b, f"d{name}")


@gpu
@needs_cuda
def test_gpu_deterministic_is_bitwise():
    K, B, N = 128, 2, 1 << 20
    g = torch.Generator(device=DEVICE).manual_seed(0)
    u = torch.randn(B, N, device=DEVICE, generator=g) * 10 + 40
    v = (u * 0.5 + torch.randn(B, N, device=DEVICE, generator=g) * 5).clamp(-5, 140)
    m = torch.rand(B, N, device=DEVICE, generator=g)
    first = mk.joint_hist_forward(u, v, m, K, 1.0, deterministic=True)
    for _ in range(3):
        assert torch.equal(first, mk.joint_hist_forward(u, v, m, K, 1.0, deterministic=True))
    h = mk.hist_forward(u, m, K, 1.0, deterministic=True)
    assert torch.equal(h, mk.hist_forward(u, m, K, 1.0, deterministic=True))
    fast = mk.joint_hist_forward(u, v, m, K, 1.0)
    torch.testing.assert_close(fast, first, rtol=1e-4, atol=1e-4 * first.abs().max().item())
    G = torch.randn(B, K, K, device=DEVICE)
    a = mk.joint_hist_backward(G, u, v, m, K, 1.0, needs_m=True)
    b = mk.joint_hist_backward(G, u, v, m, K, 1.0, needs_m=True)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@gpu
@needs_cuda
def test_gpu_peaked_histogram():
    """All pixels in one bin (black background): heavy same-address contention, exact sums."""
    K, N = 32, 1 << 22
    u = torch.full((1, N), 3.0, device=DEVICE)
    for det in (False, True):
        J = mk.joint_hist_forward(u, u, None, K, 1.0, "box", "box", deterministic=det)
        assert J[0, 3, 3].item() == N and J.sum().item() == N
        H = mk.hist_forward(u, None, K, 1.0, "box", deterministic=det)
        assert H[0, 3].item() == N


@gpu
@needs_cuda
def test_gpu_offsets_past_2_31():
    """Rows that start past 2**31 elements: int64 offsets (int32 ones would wrap)."""
    B, N, K, far = 3, 1 << 30, 4, 64  # N - far = 2**6 (2**24 - 1): exact in float32
    free, _ = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.skip("needs about 40 GiB of free GPU memory")
    u = torch.arange(B, device=DEVICE, dtype=torch.float32)[:, None].expand(B, N).contiguous()
    u[:, -far:] = 1e6  # the last pixels of each row are far away: weight 0
    J = mk.joint_hist_forward(u, u, None, K, 1.0, "box", "box", deterministic=True)
    H = mk.hist_forward(u, None, K, 1.0, "box", deterministic=True)
    for b in range(B):
        assert J[b, b, b].item() == N - far and H[b, b].item() == N - far
    assert J.double().sum().item() == B * (N - far) and H.double().sum().item() == B * (N - far)
    del J, H
    m = torch.ones_like(u)
    g = torch.arange(B * K, device=DEVICE, dtype=torch.float32).view(B, K) + 1
    _, dm = mk.hist_backward(g, u, m, K, 1.0, "box", needs_u=False, needs_m=True)
    for b in range(B):
        assert dm[b, 0].item() == g[b, b].item() and dm[b, -far - 1].item() == g[b, b].item()
        assert dm[b, -far:].abs().max().item() == 0.0


# ---------------------------------------------------------------- entropies of the joint histogram


def _entropy_inputs(k, seed):
    """Joint histograms (5, K, K): random with ~30% empty bins, one peaked, one single-bin,
    one tiny-mass and one all zero (the last is checked apart from the oracle: 0/0 there)."""
    g = torch.Generator().manual_seed(seed)
    j = torch.rand(5, k, k, generator=g, dtype=torch.float64) * 100
    j[0][torch.rand(k, k, generator=g) < 0.3] = 0.0
    j[1] = j[1] ** 6  # peaked
    j[2] = 0.0
    j[2, k // 2, k - 1] = 7.0
    j[3] *= 1e-30
    j[4] = 0.0
    return j


@pytest.mark.parametrize("k", [2, 7, 64, 100, 256])
def test_entropy_kernels_match_oracle(k):
    """Triton entropies (forward) and dL/dJ (backward) against the float64 formula and its autograd."""
    from oracle import entropies as oracle_entropies

    from mi.information import _TritonEntropies

    j64 = _entropy_inputs(k, seed=k)
    f64 = dict(dtype=torch.float64)
    w = torch.tensor([[0.7], [-1.3], [0.4]], **f64) * torch.linspace(1, 2, 5, **f64)  # dL/dH per histogram
    jo = j64[:4].clone().requires_grad_()
    ref = torch.stack(oracle_entropies(jo))  # (3, 4)
    (ref * w[:, :4]).sum().backward()
    jt = j64.float().to(DEVICE).requires_grad_()
    got = torch.stack(_TritonEntropies.apply(jt)[:3])  # (3, 5); the rest are saved for the backward
    (got * w.float().to(DEVICE)).sum().backward()
    got, grad = got.detach().cpu().double(), jt.grad.cpu().double()
    torch.testing.assert_close(got[:, :4], ref.detach(), rtol=0, atol=1e-5 * max(1.0, ref.abs().max().item()))
    for b in range(4):  # per histogram: the gradients scale as 1 / sum J
        tol = 1e-5 * jo.grad[b].abs().max().item()
        torch.testing.assert_close(grad[b], jo.grad[b], rtol=0, atol=tol)
    assert got[:, 4].eq(0).all() and grad[4].eq(0).all()  # all zero: zero entropies, zero gradient


@pytest.mark.parametrize(
    "normalize,base", [("none", None), ("none", 2.0), ("arithmetic", None), ("studholme", None)]
)
def test_score_kernels_match_oracle_and_torch(normalize, base):
    """MI and its normalisations fused into the entropy kernels (``mutual_information_from_joint``
    with backend="triton"): values and dL/dJ against the float64 oracle where it is defined,
    and against backend="torch" everywhere, including the single-bin and all-zero histograms
    whose scores fall back to the value of independent variables. Leading dims (2, 5) and an
    expanded (stride-0) incoming gradient from sum's backward."""
    from oracle import mutual_information as oracle_mi

    j = torch.cat([_entropy_inputs(16, seed=3), _entropy_inputs(16, seed=4)]).reshape(2, 5, 16, 16)
    jo = j[:, [0, 1, 3]].clone().requires_grad_()  # the oracle's 0/0 rows left out
    ref = oracle_mi(jo, normalize, math.e if base is None else base)
    ref.sum().backward()
    out = {}
    for backend in ("torch", "triton"):
        jj = j.float().to(DEVICE).requires_grad_()
        score = mi.mutual_information_from_joint(jj, normalize, base, backend=backend)
        score.sum().backward()
        out[backend] = score.detach().cpu().double(), jj.grad.cpu().double()
    score, grad = out["triton"]
    torch.testing.assert_close(score[:, [0, 1, 3]], ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(score, out["torch"][0], rtol=1e-5, atol=1e-6)
    for g, go in zip(grad[:, [0, 1, 3]].flatten(0, 1), jo.grad.flatten(0, 1)):
        torch.testing.assert_close(g, go, rtol=0, atol=1e-5 * go.abs().max().item())  # scales as 1 / sum J
    for g, gt in zip(grad.flatten(0, 1), out["torch"][1].flatten(0, 1)):
        torch.testing.assert_close(g, gt, rtol=0, atol=1e-5 * gt.abs().max().item() + 1e-30)
    assert grad[:, 4].eq(0).all()  # all-zero histograms: no gradient
    with pytest.raises(ValueError, match="backend"):
        mi.entropies_from_joint(j, backend="cuda")
