"""Joint histograms sharded over torch.distributed (gloo on CPU): 2 and 3 processes, each with a
slab of the same volumes, must give the single-process numbers on the whole volumes, and each
its own slab's gradient: 1e-9 in float64 and 1e-5 in float32 (relative to the largest value)."""

import os
import socket
import tempfile
import warnings

import pytest
import torch
import torch.multiprocessing as mp

import mi

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="no gloo"
)

#: (name, keyword arguments, dtype); every case runs on every rank in one spawn per world size
CASES = [
    ("auto-f64", dict(num_bins=16, sigma=0.7), torch.float64),
    ("auto-f32", dict(num_bins=16, sigma=0.7), torch.float32),
    ("fixed-studholme", dict(num_bins=24, value_range=(-0.1, 1.2), normalize="studholme"), torch.float64),
    ("mask-per-channel", dict(num_bins=12, per_channel=True, mask=True), torch.float64),
    ("mattes-mask", dict(num_bins=20, kernel="mattes", mask=True), torch.float64),
    ("bspline-arith", dict(num_bins=16, kernel="bspline", normalize="arithmetic"), torch.float32),
    # masks at the float32 extremes: scaled by each whole image's largest weight (once each
    # rank's own unscaled: NaN at 3e38, 5 % off at 1e-44)
    ("mask-3e38", dict(num_bins=12, mask=3e38), torch.float32),
    ("mask-1e-44", dict(num_bins=12, mask=1e-44, value_range=(0.0, 1.0)), torch.float32),
]


def _volumes(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 2, 11, 6, 5, generator=g, dtype=torch.float64)
    y = torch.sin(3 * x) ** 2 + 0.1 * torch.rand(x.shape, generator=g, dtype=torch.float64)
    m = (torch.rand(2, 1, 11, 6, 5, generator=g) > 0.3).double() * torch.rand(2, 1, 11, 6, 5, generator=g)
    m[:, :, 7:] = 0  # some ranks' slabs are all masked out
    return x.to(dtype), y.to(dtype), m.to(dtype)


def _score(x, y, m, kw, group=None):
    kw = dict(kw)
    scale = kw.pop("mask", False)
    mask = None if scale is False else m if scale is True else m * scale
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    s = mi.mutual_information(x, y, mask=mask, group=group, **kw)
    h = mi.entropies(
        x.detach(), y.detach(), mask=mask, group=group, **{k: v for k, v in kw.items() if k != "normalize"}
    )
    gx, gy = torch.autograd.grad(s.sum(), (x, y))
    return s.detach(), torch.stack(h), gx, gy


def _worker(rank, world, init, out_dir):
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    group = torch.distributed.group.WORLD
    # uneven slabs along the depth axis, one of them empty for world = 3 (11 = 6 + 5 + 0)
    bounds = {2: [0, 6, 11], 3: [0, 6, 11, 11]}[world]
    lo, hi = bounds[rank], bounds[rank + 1]
    results = {}
    for name, kw, dtype in CASES:
        x, y, m = _volumes(dtype)
        s, h, gx, gy = _score(x[:, :, lo:hi], y[:, :, lo:hi], m[:, :, lo:hi], kw, group)
        results[name] = (s, h, gx, gy, lo, hi)
    x, y, _ = _volumes(torch.float64)
    loss = mi.MutualInformationLoss(group=group)(x[:, :, lo:hi], y[:, :, lo:hi])
    results["loss"] = loss.item() - mi.MutualInformationLoss()(x, y).item()  # 0: the whole volume's
    bad = x.clone()
    bad[0, 0, 0, 0, 0] = float("nan")  # on rank 0's slab only: every rank must raise
    try:
        mi.mutual_information(bad[:, :, lo:hi], y[:, :, lo:hi], group=group)
        results["nan"] = "no error"
    except ValueError as e:
        results["nan"] = str(e)
    b = 2 + rank  # a batch per rank: every rank must raise (gloo once aborted the process)
    try:
        mi.mutual_information(torch.rand(b, 1, 4, 4), torch.rand(b, 1, 4, 4), group=group)
        results["mismatch"] = "no error"
    except ValueError as e:
        results["mismatch"] = str(e)
    # a float64 mask on float32 images, rank 0's slab 1e-50 (below float32) and the rest 1: the
    # whole images' largest weight is 1, as one process sees it (rank 0 alone refused it, and the
    # others waited in the next collective)
    xf, yf, _ = _volumes(torch.float32)
    tiny = torch.ones(xf.shape, dtype=torch.float64)
    tiny[:, :, :6] = 1e-50
    results["tiny-slab"] = _refusal(
        lambda: mi.mutual_information(xf[:, :, lo:hi], yf[:, :, lo:hi], mask=tiny[:, :, lo:hi], group=group)
    )
    # every window underflows (a range far from the images): refused on every rank, as by one
    # process (it scored 0)
    far = dict(value_range=(100.0, 101.0), group=group)
    results["underflow"] = _refusal(lambda: mi.mutual_information(xf[:, :, lo:hi], yf[:, :, lo:hi], **far))
    norm = "none" if rank == 0 else "studholme"  # (each rank scored its own way)
    results["normalize"] = _refusal(
        lambda: mi.mutual_information(xf[:, :, lo:hi], yf[:, :, lo:hi], normalize=norm, group=group)
    )
    # the backward with a float mask that needs a gradient: nothing went through the collective's
    # missing autograd kernel (torch warned "c10d::allreduce_: an autograd kernel was not registered")
    xm = xf[:, :, lo:hi].clone().requires_grad_()
    mm = _volumes(torch.float32)[2][:, :, lo:hi].clone().requires_grad_()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        mi.mutual_information(xm, yf[:, :, lo:hi], mask=mm, group=group).sum().backward()
    results["warnings"] = [str(w.message) for w in seen]
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def _refusal(call):
    """The ValueError's message, or the value when there was none."""
    try:
        return call().tolist()
    except ValueError as e:
        return str(e)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_equals_single_process(world):
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world, f"tcp://127.0.0.1:{_free_port()}", out), nprocs=world, join=True)
        ranks = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(world)]
    for name, kw, dtype in CASES:
        want = _score(*_volumes(dtype), kw)
        tol = 1e-9 if dtype == torch.float64 else 1e-5
        for r, res in enumerate(ranks):
            s, h, gx, gy, lo, hi = res[name]
            pairs = ((s, want[0], "score"), (h, want[1], "entropies"))
            pairs += ((gx, want[2][:, :, lo:hi], "grad x"), (gy, want[3][:, :, lo:hi], "grad y"))
            for got, ref, what in pairs:
                scale = max(ref.abs().max().item(), 1e-30) if ref.numel() else 1.0
                err = (got - ref).abs().max().item() if ref.numel() else 0.0
                assert got.shape == ref.shape and err <= tol * scale, f"{name} rank {r} {what}: {err:.3g}"
    assert all(res["nan"] == "x contains NaN or Inf" for res in ranks), [res["nan"] for res in ranks]
    assert all(abs(res["loss"]) < 1e-12 for res in ranks), [res["loss"] for res in ranks]
    want = f"group: the ranks passed different rows (batch x channels) (2 to {world + 1})"
    assert all(res["mismatch"].startswith(want) for res in ranks), [res["mismatch"] for res in ranks]
    xf, yf, _ = _volumes(torch.float32)
    tiny = torch.ones(xf.shape, dtype=torch.float64)
    tiny[:, :, :6] = 1e-50
    want = mi.mutual_information(xf, yf, mask=tiny).tolist()
    assert all(res["tiny-slab"] == want for res in ranks), [res["tiny-slab"] for res in ranks]
    want = "the joint histogram holds only kernel tails: its largest cell is 0 "
    assert all(str(res["underflow"]).startswith(want) for res in ranks), [res["underflow"] for res in ranks]
    want = "group: the ranks passed different normalize (0 to 2)"
    assert all(str(res["normalize"]).startswith(want) for res in ranks), [res["normalize"] for res in ranks]
    assert not [w for res in ranks for w in res["warnings"] if "autograd kernel" in w]


def test_group_needs_an_initialised_process_group():
    x = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="init_process_group"):
        mi.mutual_information(x, x, group=object())
