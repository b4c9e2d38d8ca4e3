"""Property-based tests (hypothesis): what must hold for any finite input.

Drawn: 1-D to 5-D images, batch 0, 1 or 3, one or two channels; float16, bfloat16, float32,
float64; values at scales 1e-30 to 1e30 (float16 within its range), random, constant,
two-valued or smooth; masks none, bool, float, all-zero or a single pixel; every window
and normalisation; K 2 to 512; sigma 0.05 to 50 bins; fixed or automatic ranges; both
backends (Triton in the interpreter, on small cases).

Checked: finite values and gradients (or the documented refusal of a gradient that would
overflow, verified to be one); the joint sums to 1 (or 0 when no pixel counts) and the
entropies' marginals are its sums; 0 <= MI <= min(H(x), H(y)); symmetry of the symmetric
windows; invariance of "auto" ranges under x -> 2**k x (exact) and x -> a x + b; the
normalised scores' ranges; agreement with the dense float64 oracle; the caller's tensors
unchanged.

The "ci" profile (the default, used by ``make test``) is derandomised and bounded so the
file runs in well under two minutes here; ``HYPOTHESIS_PROFILE=dev`` draws fresh, more
examples.
"""

import math
import os
import re

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from oracle import dense_hist, dense_joint  # noqa: E402
from oracle import entropies as oracle_entropies  # noqa: E402

import mi  # noqa: E402

settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
settings.register_profile("dev", max_examples=400, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TRITON = mi.triton_available()
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
#: float16 holds 6e-8 .. 65504: its scales stay inside
SCALES = {
    torch.float16: (-3, 3),
    torch.bfloat16: (-30, 30),
    torch.float32: (-30, 30),
    torch.float64: (-30, 30),
}
#: Bounds on |ours - reference| / max(|reference|, 1), from the largest errors the "ci" and "dev"
#: profiles measured, with a margin of about 4 to 10: float64 1.8e-15; float32 5.9e-7 (both
#: backends); float16 4.7e-4 and bfloat16 3.8e-3, whose results are rounded to their own
#: dtype (2 units of their epsilon); the histograms in data units, float32 4.2e-6 (the
#: Gaussian's truncation at 2**-24 of its peak, over up to 300 bins) and float64 1.3e-15.
TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 5e-6, torch.float64: 2e-14}
HIST_TOL = {torch.float32: 3e-5, torch.float64: 2e-14}


def map_tol(num_bins, sigma, dtype):
    """What a sample's bin coordinate, rounded once in the accumulation dtype (up to K units of
    its epsilon), does to a window weight: |dw| <= |du| max|w'| = |du| 0.61 / sigma for the
    Gaussian (0.5 for the cubic B-spline: sigma 1 there). Added to the bounds against the
    float64 oracle, times 8 (measured up to 1.7 times it: 5.2e-6 at K = 57, sigma 0.37 in
    float32; 5.0e-14 at K = 102, sigma 0.37 in float64)."""
    eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps / 2
    return 8 * num_bins * eps / sigma


#: The smallest sigma for which every sample keeps some of its mass, by design: the window
#: keeps the bins within 5.77 sigma (>= 0.5 from sigma 0.087 on; the Triton forward then skips
#: only cells below 2**-24 of a sample's own largest). Below it the oracle, which truncates
#: nothing, differs. (It was 0.1227 while the Triton forward skipped cells below 2**-24 of the
#: kernel's peak; 400 examples per dtype and backend pass at 0.087.)
SIGMA_ORACLE = 0.087


# ---------------------------------------------------------------- drawing a case


#: Every dtype is a test of its own (a short derandomised run left to draw the dtype can miss
#: one); the Triton backend (the interpreter, slow) draws a quarter as many examples.
TRITON_DTYPES = DTYPES[:3]
triton_only = pytest.mark.skipif(not TRITON, reason="triton is not importable")
fewer = settings(settings.default, max_examples=max(4, settings.default.max_examples // 4))


def _ids(dtypes):
    return [str(d).split(".")[-1] for d in dtypes]


@st.composite
def cases(draw, backend, dtype):
    small = backend == "triton"  # the interpreter is slow
    ndim = draw(st.integers(1, 5))
    budget = 48 if small else 200
    sizes, total = [], 1
    for _ in range(ndim):
        s = draw(st.integers(1, max(1, min(9, budget // total))))
        sizes.append(s)
        total *= s
    batch = draw(st.sampled_from([1, 3, 0]))  # (the first is what short runs draw most)
    channels = draw(st.sampled_from([1, 2]))
    shape = (batch, channels, *sizes)
    kernel = draw(st.sampled_from(["gaussian", "bspline", "mattes"]))
    k = draw(st.integers({"mattes": 5, "bspline": 4}.get(kernel, 2), 64 if small else 512))
    sigma = math.exp(draw(st.floats(math.log(0.05), math.log(4.0 if small else 50.0))))
    lo_e, hi_e = SCALES[dtype]
    return dict(
        backend=backend, dtype=dtype, shape=shape, kernel=kernel, num_bins=k, sigma=sigma,
        normalize=draw(st.sampled_from(["none", "arithmetic", "studholme"])),
        per_channel=draw(st.booleans()),
        scale=10.0 ** draw(st.integers(lo_e, hi_e)),
        offset=draw(st.sampled_from([0.0, -0.5, 3.0])),
        kinds=(draw(st.sampled_from(["random", "constant", "two", "smooth"])),
               draw(st.sampled_from(["random", "dependent", "constant", "two"]))),
        mask=draw(st.sampled_from([None, "bool", "float", "zero", "one", "broadcast"])),
        fixed=draw(st.sampled_from([None, "same", "each", "mixed"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )  # fmt: skip


def make(case):
    """(x, y, mask, value_range) of a case: float64 values rounded to the case's dtype."""
    g = torch.Generator().manual_seed(case["seed"])
    shape = case["shape"]
    base = torch.rand(shape, generator=g, dtype=torch.float64)

    def image(kind, other):
        if kind == "constant":
            return torch.full(shape, 0.37, dtype=torch.float64)
        if kind == "two":
            return (torch.rand(shape, generator=g, dtype=torch.float64) > 0.5).double()
        if kind == "smooth":
            return torch.cumsum(torch.rand(shape, generator=g, dtype=torch.float64), -1) / shape[-1]
        if kind == "dependent":
            return torch.sin(3 * other) ** 2 + 0.05 * torch.rand(shape, generator=g, dtype=torch.float64)
        return torch.rand(shape, generator=g, dtype=torch.float64)

    x = image(case["kinds"][0], base)
    y = image(case["kinds"][1], x)
    a, b = case["scale"], case["offset"] * case["scale"]
    x, y = (t * a + b for t in (x, y))
    x, y = x.to(case["dtype"]), y.to(case["dtype"])
    m = None
    kind = case["mask"]
    if kind == "bool":
        m = torch.rand(shape, generator=g) > 0.3
    elif kind == "float":
        m = torch.rand(shape, generator=g, dtype=torch.float64).to(torch.float32)
    elif kind == "zero":
        m = torch.zeros(shape)
    elif kind == "one":
        m = torch.zeros(shape)
        m.view(-1)[: max(0, m.numel() - 1) : 7] = 1.0  # a single pixel per row, more or less
    elif kind == "broadcast":
        m = torch.rand((shape[0], 1, *shape[2:]), generator=g) > 0.5
    rng = "auto"
    if case["fixed"]:

        def span(t):  # the data's range with a margin, as a user would pass it
            v = t.double()
            lo, hi = (v.min().item(), v.max().item()) if v.numel() else (0.0, 1.0)
            pad = 0.25 * (hi - lo) if hi > lo else max(abs(lo), 1e-30) * 0.5 + 1e-300
            return (lo - pad, hi + pad)

        rx, ry = span(x), span(y)
        rng = {"same": (min(rx[0], ry[0]), max(rx[1], ry[1])), "each": (rx, ry), "mixed": (rx, "auto")}[
            case["fixed"]
        ]
    return x, y, m, rng


def call_kwargs(case, rng, m):
    return dict(num_bins=case["num_bins"], sigma=case["sigma"], value_range=rng, mask=m,
                per_channel=case["per_channel"], kernel=case["kernel"], backend=case["backend"])  # fmt: skip


# ---------------------------------------------------------------- the dense oracle of a public call


def _rows(t, rows):
    return t.reshape(rows, t.numel() // rows if rows else 0)


def oracle_joint(x, y, m, case, rng):
    """J (R, K, K) in float64 by the dense formula, following the documented conventions:
    ranges per row over the kept pixels, the layouts of the windows, ITK's Mattes terms."""
    b, c = x.shape[:2]
    rows = b * c if case["per_channel"] else b
    xr, yr = _rows(x.double(), rows), _rows(y.double(), rows)
    mr = None if m is None else _rows(m.double().expand(x.shape).contiguous(), rows)
    k, kernel = case["num_bins"], case["kernel"]
    first, length = {"gaussian": (0.0, k - 1.0), "bspline": (1.0, k - 3.0), "mattes": (2.0, k - 4.0)}[kernel]
    rngs = (rng, rng) if rng == "auto" or not isinstance(rng[0], (tuple, str)) else rng

    def lohi(t, r):
        if r != "auto":
            return torch.full((rows, 1), float(r[0]), dtype=torch.float64), torch.full(
                (rows, 1), float(r[1]), dtype=torch.float64
            )
        keep = torch.ones_like(t, dtype=torch.bool) if mr is None else mr > 0
        lo = (
            torch.where(keep, t, math.inf).amin(-1, keepdim=True)
            if t.shape[1]
            else torch.zeros(rows, 1, dtype=torch.float64)
        )
        hi = (
            torch.where(keep, t, -math.inf).amax(-1, keepdim=True)
            if t.shape[1]
            else torch.ones(rows, 1, dtype=torch.float64)
        )
        empty = ~keep.any(-1, keepdim=True) if t.shape[1] else torch.ones(rows, 1, dtype=torch.bool)
        return torch.where(empty, 0.0, lo), torch.where(empty, 1.0, hi)

    def coords(t, r):
        lo, hi = lohi(t, r)
        span = hi - lo
        if kernel == "mattes":
            width = torch.where(span > 0, span / (k - 4), 1.0)
            return t / width - (lo / width - 2.0)
        return (t - lo) * torch.where(span > 0, length / torch.where(span > 0, span, 1.0), 1.0) + first

    u, v = coords(xr, rngs[0]), coords(yr, rngs[1])
    if kernel == "mattes":
        return dense_joint(u.floor().clamp(2, k - 3), v, mr, k, case["sigma"], "box", "bspline")
    return dense_joint(u, v, mr, k, case["sigma"], kernel, kernel)


def oracle_scores(joint, normalize):
    """Entropies and the score of float64 joints (R, K, K), with the library's conventions for
    an all-zero histogram: zero entropies, the value of independent variables."""
    empty = joint.sum((-2, -1)) == 0
    safe = torch.where(empty[:, None, None], 1.0, joint)
    ha, hb, hab = (torch.where(empty, 0.0, h) for h in oracle_entropies(safe))
    mi_ = ha + hb - hab
    if normalize == "arithmetic":
        return torch.where(ha + hb > 0, 2 * mi_ / torch.where(ha + hb > 0, ha + hb, 1.0), 0.0), (ha, hb, hab)
    if normalize == "studholme":
        return torch.where(hab > 0, (ha + hb) / torch.where(hab > 0, hab, 1.0), 1.0), (ha, hb, hab)
    return mi_, (ha, hb, hab)


# ---------------------------------------------------------------- the properties


def _close(a, b, tol, what):
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    err = (a - b).abs()
    bound = tol * torch.maximum(b.abs(), torch.ones_like(b))
    assert bool((err <= bound).all()), f"{what}: {a.tolist()[:6]} vs {b.tolist()[:6]}"


def _refusal_is_genuine(err: ValueError, x, y, m, case, rng):
    """A ValueError about a range too narrow for the gradient must be one: some row's range
    gives a slope beyond 2**100 bins per unit (float32) / 2**1000 (float64); one about a
    histogram of kernel tails alone too: the dense joint's largest cell is below 2**-102."""
    msg = str(err)
    if "holds only kernel tails" in msg:
        return _tails_only(x, y, m, case, rng)
    if "spans only" not in msg:
        return False
    name = re.search(r"with respect to (\w+)", msg).group(1)
    t = x if name == "x" else y
    limit = 2.0**1000 if t.dtype == torch.float64 else 2.0**100
    return "could overflow" in msg and _min_span(t, m, case, rng, name) * limit < case["num_bins"]


def _tails_only(x, y, m, case, rng, margin=2.0):
    """Whether some row's dense joint histogram peaks below 2**-102 (float64: 2**-998) of a
    pixel at a bin centre (the torch backend refuses it; the Triton path does not check)."""
    if x.numel() == 0:
        return False
    peaks = oracle_joint(x, y, m, case, rng).flatten(1).amax(1)
    if m is not None:  # (the library brings each row's largest mask weight into [0.5, 1))
        b, c = x.shape[:2]
        rows = b * c if case["per_channel"] else b
        peaks = peaks / _rows(m.double().expand(x.shape).contiguous(), rows).amax(-1).clamp(min=1e-300)
    limit = 2.0**-998 if x.dtype == torch.float64 else 2.0**-102
    return bool(((peaks > 0) & (peaks < margin * limit)).any())


def _min_span(t, m, case, rng, name):
    b, c = t.shape[:2]
    rows = b * c if case["per_channel"] else b
    r = rng if rng == "auto" or not isinstance(rng[0], (tuple, str)) else rng[0 if name == "x" else 1]
    if r != "auto":
        return r[1] - r[0]
    tr = _rows(t.double(), rows)
    keep = (
        torch.ones_like(tr, dtype=torch.bool)
        if m is None
        else _rows(m.expand(t.shape).contiguous(), rows) > 0
    )
    spans = [(v[k].max() - v[k].min()).item() for v, k in zip(tr, keep) if k.any()]
    spans = [s for s in spans if s > 0]
    return min(spans) if spans else math.inf


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids(DTYPES))
@given(data=st.data())
def test_mutual_information_properties(dtype, data):
    check_mutual_information(data.draw(cases("torch", dtype), label="case"))


@triton_only
@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=_ids(TRITON_DTYPES))
@fewer
@given(data=st.data())
def test_mutual_information_properties_triton(dtype, data):
    check_mutual_information(data.draw(cases("triton", dtype), label="case"))


def check_mutual_information(case):
    x, y, m, rng = make(case)
    # The Triton path does not refuse a joint histogram of window tails alone (its gradient
    # overflows: README): such draws are not claimed there, so they are rejected, not passed.
    assume(case["backend"] != "triton" or not _tails_only(x, y, m, case, rng, margin=2.0**24))
    copies = [None if t is None else t.clone() for t in (x, y, m)]
    tol = TOL[case["dtype"]]
    rounded = map_tol(case["num_bins"], case["sigma"] if case["kernel"] == "gaussian" else 1.0, case["dtype"])
    kw = call_kwargs(case, rng, m)
    normalize = case["normalize"]
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    mg = m.clone().requires_grad_() if m is not None and m.is_floating_point() else m
    try:
        score = mi.mutual_information(xg, yg, normalize=normalize, **{**kw, "mask": mg})
        grads = torch.autograd.grad(
            score.sum(), [t for t in (xg, yg, mg) if t is not None and t.requires_grad]
        )
    except ValueError as e:
        if "overflows float16" in str(e):  # verified: the float32 gradient is beyond float16
            xf = x.float().requires_grad_()
            yf = y.float().requires_grad_()
            s = mi.mutual_information(xf, yf, normalize=normalize, **kw)
            g = torch.autograd.grad(s.sum(), (xf, yf))
            assert max(t.abs().max().item() for t in g) > 65504 * 0.9, str(e)
        else:
            assert _refusal_is_genuine(e, x, y, m, case, rng), str(e)
        if "holds only kernel tails" in str(e):  # the values too: refused as a whole
            return
        with torch.no_grad():
            score = mi.mutual_information(x, y, normalize=normalize, **kw)
        grads = ()
    lead = (case["shape"][0], case["shape"][1]) if case["per_channel"] else (case["shape"][0],)
    assert score.shape == lead and score.dtype == case["dtype"]
    assert torch.isfinite(score).all(), score
    for g in grads:
        assert torch.isfinite(g).all(), "a gradient is not finite"

    ha, hb, hab = mi.entropies(x, y, base=None, **kw)
    p = mi.joint_histogram(x, y, **kw)
    sum_tol = max(1e-5, 2 * torch.finfo(p.dtype).eps)  # each probability rounded to the output dtype
    p = p.double()
    total = p.sum((-2, -1))
    assert bool(((total - 1).abs() < sum_tol).logical_or(total == 0).all()), total
    # the marginals are the joint's sums: H(x) of the returned joint's row sums
    pr = p.reshape(-1, case["num_bins"], case["num_bins"])
    rha, rhb, rhab = oracle_scores(pr, "none")[1]
    for got, want, what in ((ha, rha, "H(x)"), (hb, rhb, "H(y)"), (hab, rhab, "H(x,y)")):
        _close(got.reshape(-1), want, tol, what)
    # information inequalities, in the accumulation's rounding
    mi_none = mi.mutual_information(x, y, normalize="none", **kw).double()
    slack = tol * (1 + hab.double().abs())
    assert bool((mi_none >= -slack).all() & (mi_none <= torch.minimum(ha, hb).double() + slack).all())
    if normalize == "arithmetic":
        assert bool(((score.double() >= -slack) & (score.double() <= 1 + slack)).all())
    if normalize == "studholme":
        assert bool(((score.double() >= 1 - slack) & (score.double() <= 2 + slack)).all())
    # symmetry of the symmetric windows
    if case["kernel"] != "mattes":
        swapped = rng if rng == "auto" or not isinstance(rng[0], (tuple, str)) else (rng[1], rng[0])
        back = mi.mutual_information(y, x, normalize=normalize, **{**kw, "value_range": swapped})
        _close(back, score, tol, "MI(y, x) vs MI(x, y)")
    # scaling by a power of two is exact for every window (the map's own scale absorbs it)
    if rng == "auto" and case["dtype"] != torch.float16:
        two = 2.0**-37 if case["scale"] > 1 else 2.0**37
        scaled = mi.mutual_information(x * two, y * two, normalize=normalize, **kw)
        _close(scaled, score, tol, "MI(2^k x, 2^k y)")
        if (
            case["dtype"] in (torch.float32, torch.float64)
            and case["kernel"] != "mattes"
            and case["sigma"] >= 0.3
        ):
            moved = mi.mutual_information(
                x * 3.0 - x.new_tensor(7.0) * case["scale"], y, normalize=normalize, **kw
            )
            _close(moved, score, tol + rounded, "MI(3 x - 7, y)")  # rounds x: smooth windows move little
    # the dense float64 oracle
    if case["sigma"] >= SIGMA_ORACLE:
        joint = oracle_joint(x, y, m, case, rng)
        want, (rha, rhb, rhab) = oracle_scores(joint, normalize)
        _close(score.reshape(-1), want, tol + rounded, f"score vs oracle ({normalize})")
        _close(hab.reshape(-1), rhab, tol + rounded, "H(x,y) vs oracle")
    # nothing the caller passed is modified
    for t, c in zip((x, y, m), copies):
        assert t is None or torch.equal(t, c)


@st.composite
def histogram_cases(draw, backend, dtype):
    k = draw(st.integers(2, 64 if backend == "triton" else 300))
    scale = 10.0 ** draw(st.integers(-30, 30))
    return dict(
        backend=backend, dtype=dtype, k=k, scale=scale, lo=draw(st.sampled_from([0.0, -1.0, 5.0])) * scale,
        sigma_bins=math.exp(draw(st.floats(math.log(0.1), math.log(20.0)))),
        lead=draw(st.sampled_from([(), (0,), (2,), (2, 3)])),
        n=draw(st.integers(0, 60)), weights=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)),
    )  # fmt: skip


HIST_DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", HIST_DTYPES, ids=_ids(HIST_DTYPES))
@given(data=st.data())
def test_histogram_properties(dtype, data):
    check_histograms(data.draw(histogram_cases("torch", dtype), label="case"))


@triton_only
@fewer
@given(data=st.data())
def test_histogram_properties_triton(data):
    check_histograms(data.draw(histogram_cases("triton", torch.float32), label="case"))


def check_histograms(case):
    """histogram / histogram2d in data units at any scale: sums, finite gradients, the oracle."""
    g = torch.Generator().manual_seed(case["seed"])
    k, s, lo = case["k"], case["scale"], case["lo"]
    bins = torch.linspace(0, 1, k, dtype=torch.float64) * s + lo
    step = s / (k - 1)
    # inside the bins' span: beyond it a sample far from every centre adds nothing (the window
    # is truncated at 2**-24 of its peak) where the dense formula adds dust, which the
    # normalisation would blow up when it is all there is
    x = torch.rand(*case["lead"], case["n"], generator=g, dtype=torch.float64) * s + lo
    y = (torch.rand(*case["lead"], case["n"], generator=g, dtype=torch.float64)) * s + lo
    w = torch.rand(*case["lead"], case["n"], generator=g) if case["weights"] else None
    x, y = x.to(case["dtype"]), y.to(case["dtype"])
    sigma = case["sigma_bins"] * step
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    try:
        h = mi.histogram(xg, bins, sigma, weights=w, backend=case["backend"])
        j = mi.histogram2d(xg, yg, bins, sigma, weights=w, backend=case["backend"])
        gx, gy = torch.autograd.grad(h.sum() * 0 + (h * h).sum() + (j * j).sum(), (xg, yg))
    except ValueError as e:  # only a bin step too fine for a float32 gradient
        assert "spans only" in str(e) and case["dtype"] == torch.float32 and (k - 1) / s > 2.0**100, str(e)
        return
    assert torch.isfinite(gx).all() and torch.isfinite(gy).all()
    tol = HIST_TOL[case["dtype"]] + map_tol(k, case["sigma_bins"], case["dtype"])
    for t, dims in ((h, (-1,)), (j, (-2, -1))):
        tot = t.double().sum(dims)
        assert bool(((tot - 1).abs() < 1e-5).logical_or(tot == 0).all()), tot
    rows = math.prod(case["lead"]) if case["lead"] else 1
    n = case["n"]
    u = ((x.double() - lo) / step).reshape(rows, n)
    v = ((y.double() - lo) / step).reshape(rows, n)
    wr = None if w is None else w.double().reshape(rows, n)
    rh = dense_hist(u, wr, k, case["sigma_bins"])
    rj = dense_joint(u, v, wr, k, case["sigma_bins"])
    rh = rh / rh.sum(-1, keepdim=True).clamp_min(1e-300)
    rj = rj / rj.sum((-2, -1), keepdim=True).clamp_min(1e-300)
    _close(h.reshape(-1), rh.reshape(-1), tol, "histogram vs oracle")
    _close(j.reshape(-1), rj.reshape(-1), tol, "histogram2d vs oracle")
