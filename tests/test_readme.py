"""The README's Python examples run as written, on real images, and give what their comments say.

Each ```python block of README.md is executed in a namespace that defines the names it takes
from the reader (``input1``, ``x``, ``fixed``, the files "t1.nii.gz" and "flair.nii.gz", ...);
the only edit is the distributed example's backend ("nccl" -> "gloo", one process: this
machine may have no GPU). The shapes and sums the comments state are then checked.
"""

import math
import re
import socket
from pathlib import Path

import pytest
import torch
from images import photo, remap, rotated, to_tensor01

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> dict:
    """{first line: code} of the README's ```python blocks."""
    text = README.read_text()
    out = {}
    for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        out[text[: m.start()].count("\n") + 2] = m.group(1)
    return out


def _block(containing: str) -> str:
    found = [code for code in _blocks().values() if containing in code]
    assert len(found) == 1, f"README: {len(found)} python blocks contain {containing!r}"
    return found[0]


def test_every_python_block_is_run_here():
    """A new ```python block in the README must get a test below (or this fails)."""
    keys = [
        "mi.histogram(",
        "local_mutual_information(",
        "dist.init_process_group",
        "compat.monai",
        'r.save_transform("t.tfm")',
        "register_deformable(",
    ]
    blocks = list(_blocks().values())
    assert len(blocks) == len(keys), f"README has {len(blocks)} python blocks, this file runs {len(keys)}"
    for code in blocks:
        assert sum(k in code for k in keys) == 1, code[:200]


def _pair_2d():
    """Grace Hopper's photo (300x300) and a rotated, non-monotonically remapped copy: (2, 1, 300, 300)."""
    a = photo((300, 300))
    x = to_tensor01(a).repeat(2, 1, 1, 1)
    y = remap(to_tensor01(rotated(a, 4.0))).repeat(2, 1, 1, 1)
    return x, y


@pytest.fixture(scope="module")
def brain6():
    """The brain pair of mi.registration.brain at 6 mm (32x38x31 voxels): the MNI T1 and a
    T2-like contrast of it moved by a known rigid transform, as SimpleITK images."""
    pytest.importorskip("nilearn", reason="the brain template ships with nilearn")
    from mi.registration import brain

    return brain.brain_pair(shrink=6)


def _volume_pair(brain6):
    """The pair's voxels as (1, 1, 31, 38, 32) tensors in [0, 1] (the grids are the same)."""
    import SimpleITK as sitk

    f, m = (torch.from_numpy(sitk.GetArrayFromImage(im))[None, None] for im in brain6[:2])
    return f / f.max(), m / m.max()


def test_usage_block(brain6):
    import mi

    input1, input2 = _pair_2d()
    fixed, moving = _volume_pair(brain6)
    ns = {
        "input1": input1,
        "input2": input2,
        "x": fixed,
        "y": moving.requires_grad_(),
        "overlap": fixed > 0.05,
        "fixed": fixed,
        "moving": moving.detach(),
        "mask": fixed > 0.05,
    }
    exec(_block("mi.histogram("), ns)
    assert ns["hist"].shape == (2, 256, 256)  # "(B, 256, 256), sums to 1"
    torch.testing.assert_close(ns["hist"].sum((-2, -1)), torch.ones(2))
    assert ns["score"].shape == (2,)  # "(B,)"
    assert ns["s"].shape == (1,) and ns["s"].item() > 0.1  # (B,) in nats, of a related pair
    ha, hb, hab = ns["ha"], ns["hb"], ns["hab"]
    assert bool((hab >= torch.maximum(ha, hb) - 1e-5).all())  # H(x, y) >= max(H(x), H(y))
    assert ns["p"].shape == (1, 64, 64)  # "(B, K, K), sums to 1"
    torch.testing.assert_close(ns["p"].sum(), torch.tensor(1.0))
    loss = ns["loss"]  # -NMI (Studholme): in [-2, -1]
    assert loss.ndim == 0 and -2.0 <= loss.item() <= -1.0
    assert ns["mi"] is mi


def test_local_block(brain6):
    import mi

    fixed, moving = _volume_pair(brain6)
    ns = {"mi": mi, "fixed": fixed, "moving": moving}  # mi: imported by the first block
    exec(_block("local_mutual_information("), ns)
    # (B, *grid): patches start every 8 voxels until one reaches the far end
    assert ns["s"].shape == (1, *(math.ceil((n - 16) / 8) + 1 for n in fixed.shape[2:]))
    assert ns["loss"].ndim == 0 and -2.0 <= ns["loss"].item() <= -1.0


def test_distributed_block(monkeypatch, brain6):
    import torch.distributed as dist

    import mi

    fixed, moving = _volume_pair(brain6)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with socket.socket() as sock:  # a free port
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MASTER_PORT", str(sock.getsockname()[1]))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    code = _block("dist.init_process_group").replace(
        'init_process_group("nccl")', 'init_process_group("gloo")'
    )
    moving.requires_grad_()
    ns = {"dist": dist, "mi": mi, "fixed": fixed, "moving": moving, "D": fixed.shape[2]}
    try:
        exec(code, ns)
    finally:
        dist.destroy_process_group()
    # one process holds every slice: the gradient is the whole volume's, bit for bit (one
    # rank's all-reduces are the identity; measured equal). tests/test_distributed.py checks
    # several ranks against one process.
    ref = moving.detach().requires_grad_()
    mi.MutualInformationLoss()(fixed, ref).backward()
    assert torch.equal(moving.grad, ref.grad)


def test_compat_block():
    from kornia.losses import mutual_information_loss
    from monai.losses import GlobalMutualInformationLoss as MonaiLoss

    input1, input2 = _pair_2d()
    flat1, flat2 = input1[:, 0, ::3, ::3].flatten(1), input2[:, 0, ::3, ::3].flatten(1)  # kornia's (*, N)
    ns = {"input": flat1, "target": flat2}
    exec(_block("compat.monai"), ns)
    # the drop-ins stand for kornia's and MONAI's own: the same values (measured: 0 and 1.2e-7 relative)
    torch.testing.assert_close(
        ns["loss"], mutual_information_loss(flat1, flat2, num_bins=64), rtol=1e-6, atol=1e-7
    )
    torch.testing.assert_close(
        ns["GlobalMutualInformationLoss"]()(input1, input2), MonaiLoss()(input1, input2)
    )


@pytest.fixture
def scans(tmp_path, monkeypatch):
    """t1.nii.gz and flair.nii.gz in the working directory: the brain pair at 8 mm (24x29x23
    voxels: the registrations below take seconds)."""
    pytest.importorskip("nilearn", reason="the brain template ships with nilearn")
    import SimpleITK as sitk

    from mi.registration import brain

    pair = brain.brain_pair(shrink=8)
    monkeypatch.chdir(tmp_path)
    sitk.WriteImage(pair[0], "t1.nii.gz")
    sitk.WriteImage(pair[1], "flair.nii.gz")
    return pair


def test_register_block(scans):
    from mi.registration import brain

    exec(_block('r.save_transform("t.tfm")'), ns := {})
    r = ns["r"]
    assert Path("t.tfm").is_file()
    assert r.physical.shape == (4, 4) and r.matrix.shape == (4, 4)
    assert r.warped_image().GetSize() == scans[0].GetSize()
    # the known motion ((4, -3, 5) degrees, (6, -4, 3) mm: brain_pair) found to within a tenth of
    # an 8 mm voxel (0.41 mm measured)
    assert brain.mean_error_mm(r.sitk_transform(), scans[2], scans[0]) < 0.8


def test_deformable_block(scans):
    fixed, moving, _ = scans
    points = torch.tensor([[0.0, -20.0, 10.0], [30.0, 10.0, -5.0]], dtype=torch.float64)
    ns = {"fixed": fixed, "moving": moving, "points_mm": points}
    exec(_block("register_deformable("), ns)
    r, d, affine = ns["r"], ns["d"], ns["affine"]
    assert Path("chain.h5").is_file() and Path("inverse.h5").is_file()
    assert r.warped.shape == tuple(reversed(fixed.GetSize()))
    assert r.mi_after >= affine.mi_after - 1e-3 and d.mi_after >= affine.mi_after - 1e-3
