"""The `mi` command line and the plots, run in-process (fast: small images, 64 bins)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from images import mri, photo, to_tensor01
from PIL import Image

import mi
from mi.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _row(out: str, label: str) -> list:
    """The numbers of the table row that starts with label."""
    line = next(ln for ln in out.splitlines() if ln.startswith(label))
    values = []
    for token in line.split():
        try:
            values.append(float(token))
        except ValueError:
            values = []  # a word of the label: the numbers come after it
    return values


def _score(out: str) -> float:
    line = next(ln for ln in out.splitlines() if ln.startswith("score ("))
    return float(line.rsplit(":", 1)[1])


def _check_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()


def _write_png(path: Path, a: np.ndarray) -> Path:
    Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """a: a smooth 48x64 picture; b: a non-monotonic remap of it; c: unrelated noise."""
    d = tmp_path_factory.mktemp("img")
    yy, xx = np.mgrid[0:48, 0:64] / 47.0
    a = 0.5 + 0.25 * np.sin(5 * xx) * np.cos(3 * yy) + 0.2 * xx
    rng = np.random.default_rng(0)
    return {
        "a": _write_png(d / "a.png", a),
        "b": _write_png(d / "b.png", np.sin(3 * np.pi * a) ** 2),
        "c": _write_png(d / "c.png", rng.random(a.shape)),
        "small": _write_png(d / "small.png", a[:32, :32]),
        "dir": d,
    }


def _table_against_library(out: str, x: np.ndarray, y: np.ndarray, column: int, **kw):
    """The printed table's column against mi's functions on the arrays decoded by the test
    (and numpy's correlation): each number to the 4 decimals printed."""
    a, b = torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None]
    ha, hb, hab = mi.entropies(a, b, **kw)
    want = {
        "MI (nats)": mi.mutual_information(a, b, **kw),
        "MI (bits)": mi.mutual_information(a, b, base=2, **kw),
        "NMI arithmetic": mi.mutual_information(a, b, normalize="arithmetic", **kw),
        "NMI Studholme": mi.mutual_information(a, b, normalize="studholme", **kw),
        "H(a) (nats)": ha,
        "H(b) (nats)": hb,
        "H(a,b) (nats)": hab,
        "Pearson": torch.tensor(np.corrcoef(x.ravel(), y.ravel())[0, 1]),
    }
    for label, value in want.items():
        assert _row(out, label)[column] == pytest.approx(value.item(), abs=5.1e-5), label
    return want


@pytest.mark.parametrize("image", ["photo", "mri"])
def test_demo_writes_pictures_and_aligned_beats_rotated(tmp_path, capsys, image):
    assert main(["demo", "--out", str(tmp_path), "--bins", "64", "--image", image]) == 0
    out = capsys.readouterr().out
    a = to_tensor01(photo())[0, 0].numpy() if image == "photo" else mri() / mri().max()
    b = (np.sin(3 * np.pi * a) ** 2).astype(np.float32)  # the demo's second modality, as printed
    _table_against_library(out, a, b, 0, num_bins=64, sigma=0.4, value_range=(0.0, 1.0))
    aligned, rotated = _row(out, "MI (nats)")
    assert aligned > rotated > 0
    for name in ("hist.png", "jointhist.png"):
        _check_png(tmp_path / name)
        assert f"wrote {(tmp_path / name).resolve()}" in out


def _decode(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img, dtype=np.float32) / 255.0  # the 8-bit grey PNGs written above


def test_score_two_pngs(images, tmp_path, capsys):
    out_dir = tmp_path / "pics"
    assert main(["score", str(images["a"]), str(images["b"]), "--bins", "32", "-o", str(out_dir)]) == 0
    out = capsys.readouterr().out
    want = _table_against_library(out, _decode(images["a"]), _decode(images["b"]), 0, num_bins=32, sigma=0.4)
    related = _score(out)
    assert related == pytest.approx(want["MI (nats)"].item(), abs=5.1e-7)
    _check_png(out_dir / "hist.png")
    _check_png(out_dir / "jointhist.png")
    argv = [
        "score",
        str(images["a"]),
        str(images["c"]),
        "--bins",
        "32",
        "--no-plots",
        "--out",
        str(tmp_path / "none"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert related > _score(out) >= 0
    assert not (tmp_path / "none").exists() and "wrote" not in out


def test_score_normalize_and_range(images, capsys):
    args = ["score", str(images["a"]), str(images["b"]), "--bins", "32", "--no-plots"]
    x, y = (torch.from_numpy(_decode(images[k]))[None, None] for k in "ab")
    cases = {"studholme": ["--range", "0,1"], "arithmetic": [], "none": ["--range", "-.5,1"]}
    for normalize, rng in cases.items():  # a negative LO as a separate word (argparse's trap)
        assert main(args + ["--normalize", normalize] + rng) == 0
        out = capsys.readouterr().out
        value_range = tuple(map(float, rng[1].split(","))) if rng else "auto"
        want = mi.mutual_information(
            x, y, num_bins=32, sigma=0.4, value_range=value_range, normalize=normalize
        )
        assert _score(out) == pytest.approx(want.item(), abs=5.1e-7)


def test_score_npy_volumes(tmp_path, capsys):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 16, 16)).astype(np.float32) * 100.0  # any units: --range auto
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", -a)
    assert (
        main(
            [
                "score",
                str(tmp_path / "a.npy"),
                str(tmp_path / "b.npy"),
                "--bins",
                "16",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert _row(out, "Pearson")[0] == pytest.approx(-1.0, abs=6e-5)
    assert _score(out) > 1.0  # b is a function of a: MI is about H(a)
    _check_png(tmp_path / "jointhist.png")


def _fails(argv, capsys, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mi: error:"), err
    for w in words:
        assert w in lines[0]


def test_errors_exit_2_with_one_line(images, tmp_path, capsys):
    a = str(images["a"])
    _fails(["score", a, str(tmp_path / "missing.png")], capsys, "no such file", "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    _fails(["score", junk.as_posix(), a], capsys, "cannot read", "junk.png")
    _fails(["score", a, str(images["small"]), "--no-plots"], capsys, "shape", "48x64", "32x32")
    _fails(["score", a, a, "--sigma", "-1", "--no-plots"], capsys, "sigma")
    _fails(["score", a, str(images["dir"])], capsys, "a folder with no DICOM series")


def test_usage_errors(capsys):
    assert main([]) == 2
    assert main(["score", "a.png", "b.png", "--range", "1,0"]) == 2
    assert "lo < hi" in capsys.readouterr().err
    assert main(["register", "--winsorize", "0.9"]) == 2
    assert "expected LO,HI (quantiles, e.g. 0.005,0.995) or none, got '0.9'" in capsys.readouterr().err
    assert main(["register", "--winsorize", "0.9,0.1", "--quiet", "--iterations", "1"]) == 2
    assert "winsorize must be quantiles with 0 <= lo < hi <= 1, got (0.9, 0.1)" in capsys.readouterr().err


def test_python_dash_m_help():
    r = subprocess.run(
        [sys.executable, "-m", "mi", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "usage: mi" in r.stdout and "demo" in r.stdout and "score" in r.stdout


def test_the_command_prints_warnings_and_missing_packages_as_one_line(tmp_path, monkeypatch, capsys):
    """``mi``'s warnings read ``mi: warning: ...`` (not Python's file:line form, which named a
    line of the command's own code), and a missing optional package is an error line naming
    what to install (it was a traceback for --initial FILE without SimpleITK)."""
    img = (np.add.outer(np.arange(24), np.arange(24)) % 7 / 7.0 * 255).astype(np.uint8)
    for name in ("a.png", "b.png"):
        Image.fromarray(img).save(tmp_path / name)
    cmd = [sys.executable, "-m", "mi", "register", "a.png", "b.png", "-o", "out", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "mi: warning: the fixed image has 576 voxels in all, fewer than 768" in r.stderr, r.stderr
    assert "UserWarning" not in r.stderr
    (tmp_path / "t.tfm").write_text("#Insight Transform File V1.0\n")
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import SimpleITK raises ImportError
    args = [str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "o2"), "--quiet"]
    assert main(["register", *args, "--initial", str(tmp_path / "t.tfm")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mi: error: ") and "pip install SimpleITK" in err and err.count("\n") == 1, err


_CHECKOUT = """
import sys
# as after a plain (not editable) install: no finder maps mi.kernels onto ../kernels
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, sys.argv[1])
import mi, mi.kernels.utils
print(mi.__file__, mi.kernels.__file__, mi.kernels.utils.AUTO_TILED_BINS)
"""


def test_a_checkout_imports_from_its_root():
    """python run from the repository's root finds its mi/ first (before an installed copy),
    whose kernels live in ../kernels: mi.kernels comes from there (it was an ImportError,
    "partially initialized module", for ``pip install .`` then ``python`` in the checkout)."""
    r = subprocess.run(
        [sys.executable, "-c", _CHECKOUT, str(ROOT)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    init, kernels, _ = r.stdout.split()
    assert Path(init) == ROOT / "mi" / "__init__.py" and Path(kernels) == ROOT / "kernels" / "__init__.py"


def test_plots_return_figures():
    import torch
    from matplotlib.figure import Figure

    from mi.plots import plot_histogram, plot_joint_histogram

    a = torch.rand(1, 1, 20, 30)
    fig = plot_histogram(a, num_bins=32)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    fig = plot_joint_histogram(a, 1 - a, num_bins=32, value_range="auto", log=False)
    assert isinstance(fig, Figure)
    with pytest.raises(ValueError, match="one shape"):
        plot_joint_histogram(a, a[..., :10])
    # a range per image, as mi.joint_histogram takes (once a TypeError in float())
    b = 3 * a + 5
    fig = plot_joint_histogram(a, b, num_bins=16, value_range=((0.0, 1.0), "auto"))
    half = (b.max() - b.min()).item() / 15 / 2  # b's own min..max, half a bin beyond each
    extent = fig.axes[2].images[0].get_extent()
    assert extent == pytest.approx((-1 / 30, 1 + 1 / 30, b.min().item() - half, b.max().item() + half))
    bad = [
        (lambda: plot_histogram(a, num_bins=1), ValueError, "num_bins must be an int >= 2"),  # once 1 / 0
        (lambda: plot_histogram(torch.tensor([[0.5, float("nan")]]), value_range="auto"), ValueError,
         "image: contains NaN"),  # once "bins contains NaN", an argument never passed
        (lambda: plot_joint_histogram(a, a.double() * 1e-50), ValueError, "b: values all below float32"),
    ]  # fmt: skip
    for call, exc, words in bad:
        with pytest.raises(exc, match=words):
            call()


def test_register_demo_pair(tmp_path, capsys):
    """`mi register` with no files aligns the demo pair and reports its error (< 0.5 px, 0.5 deg)."""
    import re

    assert main(["register", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"rotation ([\d.]+) deg, ([\d.]+) px at the centre, ([\d.]+) px at the worst corner", out)
    assert m, out
    angle, centre, corner = map(float, m.groups())
    assert angle < 0.5 and centre < 0.5 and corner < 0.5
    for name in ("demo_moving_registered.png", "demo_moving_registration.png", "demo_moving_matrix.txt"):
        assert (tmp_path / name).stat().st_size > 0


def test_register_passes_winsorize_on(tmp_path, monkeypatch):
    """``--winsorize`` reaches mi.register: none -> None, LO,HI -> the pair, default WINSORIZE."""
    import mi.registration.io as io
    from mi.registration.optim import WINSORIZE

    seen, register = [], io.register
    monkeypatch.setattr(io, "register", lambda *a, **k: seen.append(k["winsorize"]) or register(*a, **k))
    images = [_write_png(tmp_path / n, photo((48, 40)) / 255.0) for n in ("f.png", "m.png")]
    quick = ["register", *map(str, images), "-o", str(tmp_path / "out"), "--quiet", "--iterations", "2"]
    for option, want in (
        ([], WINSORIZE),
        (["--winsorize", "none"], None),
        (["--winsorize", "0.01,0.99"], (0.01, 0.99)),
    ):
        assert main(quick + option) == 0
        assert seen[-1] == want


def test_register_names_its_outputs_after_the_moving_name_without_its_suffix(tmp_path, capsys):
    """case1.t2.npy and case1.flair.npy beside it: both once wrote case1_*, the second run
    overwriting the first; now case1.t2_* and case1.flair_*."""
    from mi.registration.io import _stem

    assert [_stem(Path(n)) for n in ("case1.t2.nii.gz", "brain.nii", "a.b.png", "x.mha", "noext")] == [
        "case1.t2", "brain", "a.b", "x", "noext"
    ]  # fmt: skip
    (tmp_path / "series.1").mkdir()
    assert _stem(tmp_path / "series.1") == "series.1"  # a DICOM folder: its whole name
    a = photo((48, 40)) / 255.0
    for name in ("f.npy", "case1.t2.npy", "case1.flair.npy"):
        np.save(tmp_path / name, a)
    out = tmp_path / "out"
    for name in ("case1.t2.npy", "case1.flair.npy"):
        argv = ["register", str(tmp_path / "f.npy"), str(tmp_path / name), "-o", str(out), "--quiet"]
        assert main(argv + ["--iterations", "2"]) == 0
    names = {p.name for p in out.iterdir()}
    for stem in ("case1.t2", "case1.flair"):
        assert {f"{stem}_matrix.txt", f"{stem}_registered.npy", f"{stem}_registration.png"} <= names


def test_register_refuses_an_output_folder_it_cannot_create_before_the_work(tmp_path, capsys):
    f = _write_png(tmp_path / "f.png", photo((48, 40)) / 255.0)
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert main(["register", str(f), str(f), "-o", str(blocker / "sub"), "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("mi: error: cannot create the output folder") and "Traceback" not in err
    assert "normalised MI" not in out  # (the registration's summary: it did not run)


def test_register_needs_both_files(tmp_path, capsys):
    assert main(["register", str(tmp_path / "a.png")]) == 2
    assert "give both FIXED and MOVING" in capsys.readouterr().err


def test_score_of_independent_images_prints_no_negative_zero(tmp_path, capsys):
    """A constant image against noise: MI is 0 up to rounding (-1e-16), printed as 0.0000,
    not -0.0000."""
    np.save(tmp_path / "c.npy", np.zeros((20, 24)))
    np.save(tmp_path / "n.npy", np.random.default_rng(0).random((20, 24)))
    assert (
        main(["score", str(tmp_path / "c.npy"), str(tmp_path / "n.npy"), "--bins", "32", "--no-plots"]) == 0
    )
    out = capsys.readouterr().out
    assert "-0.0" not in out and _score(out) == 0.0


def test_register_notes_busy_cores(tmp_path, capsys, monkeypatch):
    """``mi register`` on a machine whose load average reaches its core count, with torch's
    threads left to spin-wait, says how to stop them (the README's OMP_WAIT_POLICY advice);
    not on an idle machine, with the setting made, with one thread, or with --quiet."""
    import mi.cli as cli

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cli.torch, "get_num_threads", lambda: 2)
    missing = str(tmp_path / "a.png")  # (a usage error after the note: no registration runs)
    for load, quiet, noted in ((2.3, False, True), (1.6, False, False), (2.3, True, False)):
        monkeypatch.setattr(cli.os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert main(["register", missing] + ["--quiet"] * quiet) == 2
        err = capsys.readouterr().err
        assert ("OMP_WAIT_POLICY=PASSIVE" in err) == noted, (load, quiet, err)
        assert (f"load average {load:.1f} on 2 cores" in err) == noted
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (2.3, 0.0, 0.0))
    assert cli.busy_cores_note() is not None
    monkeypatch.setattr(cli.torch, "get_num_threads", lambda: 1)
    assert cli.busy_cores_note() is None
    monkeypatch.setattr(cli.torch, "get_num_threads", lambda: 2)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert cli.busy_cores_note() is None


_FAULTS = """
import resource, sys, torch
from mi.cli import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "1" else None)
def step():  # a 64 MB temporary, touched, then freed (glibc maps blocks over 32 MB afresh)
    return float(torch.ones(2**24)[-1])
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt: Linux only")
def test_the_command_keeps_freed_memory_for_reuse():
    """``mi`` sets glibc's malloc to keep freed blocks (``keep_freed_memory``): a loop of large
    temporaries then reuses its memory instead of faulting fresh pages in every time (20 steps
    of 64 MB: measured 327,700 minor faults with glibc's defaults, 16,384 with the settings:
    the first step's); it leaves an allocator the caller chose (a MALLOC_ variable) alone."""
    import os
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("MALLOC_")}

    def run(apply, **extra):
        cmd = [sys.executable, "-c", _FAULTS, "1" if apply else "0"]
        out = subprocess.run(
            cmd, env={**env, **extra}, capture_output=True, text=True, check=True
        ).stdout.split()
        print(out)
        return out[0], int(out[1])

    (_, default), (applied, kept) = run(False), run(True)
    assert applied == "True" and kept * 5 < default
    chosen, _ = run(True, MALLOC_ARENA_MAX="2")
    assert chosen == "False"
    # the executable goes through it (``command``); ``main``, which programs call, does not
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="mi")
    assert script.value == "mi.cli:command"
