"""Bad input gets a ValueError/TypeError that names the argument and what was expected."""

import warnings

import numpy as np
import pytest
import torch

import mi

X = torch.rand(2, 1, 8, 8)
Y = torch.rand(2, 1, 8, 8)
S = torch.rand(2, 50)
BINS = torch.linspace(0, 1, 16)


def mi_call(**kw):
    args = dict(x=X, y=Y)
    args.update(kw)
    return lambda: mi.mutual_information(args.pop("x"), args.pop("y"), **args)


def nan_at(t, value=float("nan")):
    t = t.clone()
    t.view(-1)[3] = value
    return t


BAD_MI = [
    ("x-shape", mi_call(y=torch.rand(2, 1, 8, 9)), ValueError, "same shape"),
    ("x-ndim", mi_call(x=torch.rand(2, 8), y=torch.rand(2, 8)), ValueError, "x must be a batch of images"),
    (
        "x-int",
        mi_call(x=torch.ones(2, 1, 8, 8, dtype=torch.int64)),
        TypeError,
        "x must have a floating dtype",
    ),
    ("y-not-tensor", mi_call(y=[[1.0]]), TypeError, "y must be a torch.Tensor"),
    ("x-nan", mi_call(x=nan_at(X)), ValueError, "x contains NaN or Inf"),
    ("y-inf", mi_call(y=nan_at(Y, float("inf"))), ValueError, "y contains NaN or Inf"),
    ("sigma-zero", mi_call(sigma=0.0), ValueError, "sigma must be a positive"),
    ("sigma-neg", mi_call(sigma=-1.0), ValueError, "sigma must be a positive"),
    ("sigma-nan", mi_call(sigma=float("nan")), ValueError, "sigma must be a positive"),
    ("sigma-str", mi_call(sigma="1"), TypeError, "sigma must be a positive real number"),
    ("bins-1", mi_call(num_bins=1), ValueError, "num_bins must be at least 2"),
    ("bins-float", mi_call(num_bins=16.0), TypeError, "num_bins must be an integer"),
    ("range-order", mi_call(value_range=(1.0, 0.0)), ValueError, "value_range must be finite with lo < hi"),
    ("range-str", mi_call(value_range="minmax"), ValueError, "value_range must be 'auto'"),
    ("range-len", mi_call(value_range=(0.0, 0.5, 1.0)), ValueError, "value_range must be 'auto', a pair"),
    ("normalize", mi_call(normalize="max"), ValueError, "normalize must be one of"),
    ("base-1", mi_call(base=1), ValueError, "base must be a finite number > 1"),
    ("base-half", mi_call(base=0.5), ValueError, "base must be a finite number > 1"),  # negative MI
    ("base-inf", mi_call(base=float("inf")), ValueError, "base must be a finite number > 1"),
    ("base-str", mi_call(base="2"), TypeError, "base must be a real number > 1"),
    (  # read as a number: autograd would silently not reach it
        "base-requires-grad",
        mi_call(base=torch.tensor(2.0, requires_grad=True)),
        TypeError,
        "base is read as a number and is not differentiated",
    ),
    (
        "bspline-3-bins",
        mi_call(kernel="bspline", num_bins=3),
        ValueError,
        "kernel='bspline' needs num_bins >= 4",
    ),
    ("deterministic-str", mi_call(deterministic="no"), TypeError, "deterministic must be a bool"),
    (
        "mask-inf",
        mi_call(mask=nan_at(torch.ones(2, 1, 8, 8), float("inf"))),
        ValueError,
        "mask must be non-negative and finite",
    ),
    ("mask-shape", mi_call(mask=torch.ones(2, 1, 8, 7)), ValueError, "mask of shape"),
    (
        "mask-int",
        mi_call(mask=torch.ones(2, 1, 8, 8, dtype=torch.int32)),
        TypeError,
        "mask must be a bool or floating",
    ),
    ("mask-neg", mi_call(mask=-torch.ones(2, 1, 8, 8)), ValueError, "mask must be non-negative"),
    ("mask-nan", mi_call(mask=nan_at(torch.ones(2, 1, 8, 8))), ValueError, "mask must be non-negative"),
    ("kernel", mi_call(kernel="triangle"), ValueError, "kernel must be one of"),
    ("backend", mi_call(backend="cuda"), ValueError, "backend must be one of"),
    ("per-channel", mi_call(per_channel="yes"), TypeError, "per_channel must be a bool"),
]

J = torch.rand(2, 4, 4)

BAD_JOINT = [
    (
        "joint-list",
        lambda: mi.entropies_from_joint([[0.5, 0.0], [0.0, 0.5]]),
        TypeError,
        "joint must be a torch.Tensor",
    ),
    (
        "joint-1d",
        lambda: mi.entropies_from_joint(torch.rand(4)),
        ValueError,
        "joint must be a square histogram",
    ),
    (
        "joint-not-square",
        lambda: mi.mutual_information_from_joint(torch.rand(3, 5)),
        ValueError,
        r"square histogram \(\.\.\., K, K\).*got shape \(3, 5\)",
    ),
    (
        "joint-complex",
        lambda: mi.mutual_information_from_joint(J.to(torch.complex64)),
        TypeError,
        "joint must be real",
    ),
    (
        "joint-negative",
        lambda: mi.mutual_information_from_joint(J - 0.5),
        ValueError,
        "joint must be non-negative and finite",
    ),
    (
        "joint-nan",
        lambda: mi.entropies_from_joint(nan_at(J)),
        ValueError,
        "joint must be non-negative and finite",
    ),
    (
        "joint-base",
        lambda: mi.entropies_from_joint(J, base=1.0),
        ValueError,
        "base must be a finite number > 1",
    ),
    ("checks-str", lambda: mi.set_value_checks("off"), TypeError, "enabled must be a bool"),
    ("checks-block-str", lambda: mi.value_checks("off").__enter__(), TypeError, "enabled must be a bool"),
]

BAD_HIST = [
    (  # numpy dropped the imaginary part, with only its ComplexWarning
        "hist-bins-complex-numpy",
        lambda: mi.histogram(torch.rand(1, 5), np.linspace(0, 1, 5) + 1j, 0.3),
        TypeError,
        "bins must be real, got complex128",
    ),
    (  # (their step, (last - first) / (K - 1), overflowed; the message blamed sigma)
        "hist-bins-span",
        lambda: mi.histogram(torch.zeros(1, 3, dtype=torch.float64), [-1.5e308, 0.0, 1.5e308], 1e307),
        ValueError,
        "bins span -1.5e[+]308..1.5e[+]308, wider than float64 can hold",
    ),
    (
        "hist-x-int",
        lambda: mi.histogram(torch.ones(2, 5, dtype=torch.int32), BINS, 0.1),
        TypeError,
        "x must have a floating dtype",
    ),
    ("hist-sigma", lambda: mi.histogram(S, BINS, 0.0), ValueError, "sigma must be a positive"),
    ("hist-one-bin", lambda: mi.histogram(S, torch.tensor([0.5]), 0.1), ValueError, "at least 2 bin centres"),
    (
        "hist-uneven",
        lambda: mi.histogram(S, torch.tensor([0.0, 0.1, 0.5, 1.0]), 0.1),
        ValueError,
        "equally spaced",
    ),
    ("hist-decreasing", lambda: mi.histogram(S, BINS.flip(0), 0.1), ValueError, "bins must be increasing"),
    ("hist-bins-2d", lambda: mi.histogram(S, BINS[None], 0.1), ValueError, "bins must be 1-D"),
    ("hist-bins-nan", lambda: mi.histogram(S, nan_at(BINS), 0.1), ValueError, "bins contains NaN"),
    ("hist-nan", lambda: mi.histogram(nan_at(S), BINS, 0.1), ValueError, "x contains NaN or Inf"),
    (
        "hist-weights",
        lambda: mi.histogram(S, BINS, 0.1, weights=torch.ones(3, 50)),
        ValueError,
        "weights of shape",
    ),
    ("hist-0d", lambda: mi.histogram(torch.tensor(0.5), BINS, 0.1), ValueError, "at least 1 dimension"),
    (
        "hist2d-shape",
        lambda: mi.histogram2d(S, S[:, :10], BINS, 0.1),
        ValueError,
        "x1 and x2 must have the same shape",
    ),
    (
        "hist2d-x2-int",
        lambda: mi.histogram2d(S, S.long(), BINS, 0.1),
        TypeError,
        "x2 must have a floating dtype",
    ),
    (
        "hist2d-neg-w",
        lambda: mi.histogram2d(S, S, BINS, 0.1, weights=-torch.ones(2, 50)),
        ValueError,
        "weights must be non-negative",
    ),
]


@pytest.mark.parametrize(
    "call,exc,match",
    [c[1:] for c in BAD_MI + BAD_JOINT + BAD_HIST],
    ids=[c[0] for c in BAD_MI + BAD_JOINT + BAD_HIST],
)
def test_bad_input_raises_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_triton_backend_refuses_cpu_tensors_without_the_interpreter(monkeypatch):
    # Triton's own tl functions take their mode when triton.language is first imported: import
    # it under the interpreter first, or the later interpreted kernels cannot call them (this
    # test run first, its backend check imports it)
    pytest.importorskip("triton.language")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' needs"):
        mi.mutual_information(X, Y, backend="triton")
    joint = torch.rand(2, 4, 4)  # (once "0 active drivers" from inside Triton)
    for fn in (mi.mutual_information_from_joint, mi.entropies_from_joint):
        with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
            fn(joint, backend="triton")
    # no bins: nothing to launch, the same zeros as the torch backend (once a reshape error)
    assert torch.equal(
        mi.mutual_information_from_joint(torch.zeros(2, 0, 0), backend="triton"), torch.zeros(2)
    )


def test_modules_check_their_arguments():
    with pytest.raises(ValueError, match="normalize must be one of"):
        mi.MutualInformation(normalize="geometric")
    with pytest.raises(ValueError, match="reduction must be"):
        mi.MutualInformationLoss(reduction="avg")
    # when built, not on the first call (these constructed and failed only when called)
    for build, error, match in (
        (lambda: mi.MutualInformation(num_bins=1), ValueError, "num_bins must be at least 2"),
        (lambda: mi.MutualInformationLoss(sigma=-1), ValueError, "sigma must be a positive"),
        (
            lambda: mi.MutualInformationLoss(value_range=(1, 0)),
            ValueError,
            "value_range must be finite with lo < hi",
        ),
        (lambda: mi.MutualInformationLoss(base=0.5), ValueError, "base must be a finite number > 1"),
        (lambda: mi.MutualInformation(base="2"), TypeError, "base must be a real number"),
        (lambda: mi.LocalMutualInformationLoss(4, num_bins=2.5), TypeError, "num_bins must be an integer"),
    ):
        with pytest.raises(error, match=match):
            build()


def test_mean_of_an_empty_batch_is_refused():
    """The mean of no losses would be NaN: refused, ours and the MONAI drop-in alike (MONAI's
    own loss fails in a reshape); "sum" and "none" are well defined."""
    from mi.compat.monai import GlobalMutualInformationLoss

    empty = torch.rand(0, 1, 4, 4)
    for loss in (
        mi.MutualInformationLoss(),
        mi.LocalMutualInformationLoss(patch_size=2),
        GlobalMutualInformationLoss(),
    ):
        with pytest.raises(ValueError, match="reduction='mean' of an empty batch"):
            loss(empty, empty)
    assert mi.MutualInformationLoss(reduction="sum")(empty, empty).item() == 0.0
    assert mi.MutualInformationLoss(reduction="none")(empty, empty).shape == (0,)


def test_loss_reductions():
    x = torch.rand(3, 1, 16, 16)
    y = torch.rand(3, 1, 16, 16)
    per = mi.MutualInformationLoss(reduction="none")(x, y)
    assert per.shape == (3,)
    torch.testing.assert_close(mi.MutualInformationLoss()(x, y), per.mean())
    torch.testing.assert_close(mi.MutualInformationLoss(reduction="sum")(x, y), per.sum())
    ref = mi.mutual_information(x, y, num_bins=32, sigma=1.0, normalize="studholme")
    torch.testing.assert_close(per, -ref)


def test_value_checks_can_be_turned_off():
    bad = X.clone()
    bad[0, 0, 0, 0] = float("nan")
    previous = mi.set_value_checks(False)
    try:
        out = mi.mutual_information(bad, Y)  # no host sync, no error: NaN flows through
    finally:
        assert mi.set_value_checks(previous) is False
    assert torch.isnan(out[0])
    with pytest.raises(ValueError, match="x contains NaN"):
        mi.mutual_information(bad, Y)
    # a NaN sample's window starts at bin 0 (its weights NaN): no index out of range (it was an
    # IndexError from index_add_ in histogram())
    with mi.value_checks(False):
        h = mi.histogram(torch.tensor([[0.2, float("nan")]]), torch.linspace(0, 1, 8), 0.1)
        j = mi.histogram2d(
            torch.tensor([[0.2, float("nan")]]), torch.tensor([[0.5, 0.5]]), torch.linspace(0, 1, 8), 0.1
        )
    assert h.shape == (1, 8) and j.shape == (1, 8, 8)
    with pytest.raises(ValueError, match="x contains NaN"):
        mi.histogram(torch.tensor([[0.2, float("nan")]]), torch.linspace(0, 1, 8), 0.1)


def test_the_missed_bins_warning_weighs_the_samples_by_the_mask():
    """A fixed value_range that covers what a mask keeps: the samples the mask leaves out (70 %,
    far beyond the range: a brain mask's background) lose no mass, so no warning; without
    the mask, or with 70 % of the weight beyond the range, the warning (and its mass, by
    weight: 0.1-weighted misses are 19 % of it, no warning). histogram() weighs its own."""
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.rand(1, 1, 40, 50, generator=gen) * 0.5 + 0.5 for _ in range(2))
    out = torch.zeros(1, 1, 40, 50, dtype=torch.bool)
    out[..., 15:] = True  # 70 % of the pixels
    x, y = x.masked_fill(out, 100.0), y.masked_fill(out, -100.0)
    keep = (~out).float()
    cases = [
        (keep, None),
        (None, "more than half of the samples of x (the first image) lie"),
        (torch.ones_like(keep), "more than half of the samples of x (the first image) (by weight)"),
        (keep + 0.1 * out, None),
    ]
    for mask, warns in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mi.mutual_information(x, y, value_range=(0.5, 1.0), mask=mask)
        got = [str(w.message) for w in caught if "more than one bin beyond" in str(w.message)]
        assert (got == []) if warns is None else (len(got) == 2 and got[0].startswith(warns)), (mask, got)
    bins = torch.linspace(0.5, 1.0, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mi.histogram(x.flatten(1), bins, 0.05, weights=keep.flatten(1))
        mi.histogram2d(x.flatten(1), y.flatten(1), bins, 0.05, weights=keep.flatten(1))
    with pytest.warns(UserWarning, match="more than half of the samples of x lie"):
        mi.histogram(x.flatten(1), bins, 0.05)


def test_a_warning_names_the_callers_line_once_in_a_loop():
    """A training loop that passes images beyond value_range gets the warning once, at its own
    line (not at the library's): the text has no per-call number, and the warning is
    attributed past mi's and torch's frames (nn.Module.__call__ included)."""
    gen = torch.Generator().manual_seed(0)
    module = mi.MutualInformation()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default action: once per message and line
        for _ in range(3):
            a, b = torch.randn(2, 1, 32, 32, generator=gen) * 3, torch.rand(2, 1, 32, 32, generator=gen)
            module(a, b)
            mi.mutual_information(a, b, value_range=(0.0, 1.0))
    assert len(caught) == 2, [str(w.message) for w in caught]
    assert {w.filename for w in caught} == {__file__}
    assert caught[0].lineno != caught[1].lineno


def test_loss_modules_name_their_own_arguments_and_show_every_setting():
    """Errors of the modules name the arguments their forward takes (fixed/moving, input1/
    input2), and repr shows what changes the value (kernel, per_channel, base, ...)."""
    a, b = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9)
    for module, names in (
        (mi.MutualInformationLoss(), "fixed and moving"),
        (mi.LocalMutualInformationLoss(patch_size=4), "fixed and moving"),
        (mi.MutualInformation(), "input1 and input2"),
    ):
        with pytest.raises(ValueError, match=f"^{names} must have the same shape"):
            module(a, b)
        with pytest.raises(TypeError, match="^moving must have a floating dtype|^input2 must have"):
            module(a, a.long())
    text = repr(mi.MutualInformationLoss(num_bins=48, kernel="bspline", per_channel=True, reduction="none"))
    for part in (
        "num_bins=48",
        "kernel='bspline'",
        "per_channel=True",
        "value_range='auto'",
        "reduction='none'",
    ):
        assert part in text, text
    text = repr(mi.LocalMutualInformationLoss(patch_size=(8, 8), value_range=(0.0, 1.0), base=2))
    for part in ("patch_size=(8, 8)", "value_range=(0.0, 1.0)", "base=2"):
        assert part in text, text
    assert "base=2.0" in repr(mi.MutualInformation())
