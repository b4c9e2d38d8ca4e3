"""Launch heuristics and launcher plumbing for the histogram kernels, in one place.

Nothing here imports Triton, so the report and the tests can reason about the
configurations (window sizes, block sizes, replica counts) without compiling.
"""

import contextlib
import functools
import math

import torch

from .. import _torch

#: Window kinds, by name, as the kernels know them (a ``tl.constexpr`` int).
KERNEL_IDS = {"gaussian": 0, "bspline": 1, "box": 2, "xu": 3, "tgauss": 4, "rect": 5, "nearest": 6}
#: The kinds whose parameter is a radius R in bin widths (kornia's windows, ``mi.compat``).
RADIUS_KINDS = ("xu", "tgauss", "rect")

#: sqrt(48 ln 2): beyond this many sigmas the Gaussian is below 2**-24 of its peak, i.e.
#: below float32 resolution; the window is the ceil(2 r) bins within r = this * sigma.
#: The torch backend's constant: one spelling for both backends.
GAUSSIAN_TRUNCATION = _torch.GAUSS_SUPPORT

#: Widest window one program holds in registers whole (columns of the pixel x window tile).
#: A sigma of 4 bins gives W = ceil(2 * 5.77 * 4) = 47 -> one block of 64; wider windows
#: loop over chunks of CHUNK_W, so the register footprint does not grow with W. Chunks of 32
#: rather than 64: W = 93 (sigma 8) walks 96 columns instead of 128, and the 64-column
#: chunk's backward spilled 24 bytes for sm_90 under Triton 3.6 (torch 2.10-2.11's; none
#: under 3.9; ``make kernels-report``).
MAX_BLOCK_W, CHUNK_W = 64, 32
#: Elements of the (BLOCK_N, BLOCK_W) tile per program: 8 per thread at 4 warps.
TILE_ELEMENTS = 1024
MIN_BLOCK_N, MAX_BLOCK_N = 16, 1024
NUM_WARPS = 4

#: Privatised copies of the output the forward adds into (chosen by program id, summed
#: at the end): a peaked histogram (black background) sends most pixels to the same few
#: bins, and same-address atomics serialise in L2. More copies for the 1-D histogram,
#: whose K bins are hotter than the K x K joint ones. Capped by REPLICA_BYTES in all.
#: Fewer bins are hotter bins: a joint histogram gets enough copies for REPLICA_CELLS bins
#: per row (64 copies at K = 64, 16 at K >= 128; bench/sweep_fwd.py on an H100: 381 -> 301
#: us for 8x512x512 images at K = 64, 973 -> 841 us for a 160x192x224 volume).
MAX_REPLICAS_JOINT = 64
MAX_REPLICAS_HIST = 32
MIN_REPLICAS = 16
REPLICA_CELLS = 1 << 18
REPLICA_BYTES = 64 << 20

#: Fixed-point fraction bits of the deterministic forward (see ``fixed_point_bits``).
FIXED_POINT_BITS = 32


#: Tiled path (``tiled.py``): the largest K per direction. The forward keeps a K x K fp32
#: accumulator in registers (128 x 128: 64 registers per thread at 8 warps); the backward
#: also holds G = dL/dJ and its transpose, which at K = 128 take about 270 KB of shared
#: memory for the dot's layouts, more than an sm_90 block may have (227 KB): above 64 bins
#: the backward is the scatter path's gather (which has no atomics to avoid).
MAX_TILED_BINS = {"forward": 128, "backward": 64}
#: ``tl.dot``'s input precision in the tiled kernels, per direction (see ``tiled.py``).
TILED_PRECISION = {"forward": "tf32x3", "backward": "tf32x3"}
#: Where the tiled kernels (and the span forward) evaluate the gaussian's exp2, per
#: direction (a dict, so that benchmarks can set it): "mufu" (``tl.exp2``, the
#: special-function unit, 16 per cycle and multiprocessor) or "fma" (``tiled._exp2_fma``, a
#: polynomial on the FMA units, 128 per cycle, about 12 operations each). Not yet timed:
#: ``bench_regime.py --sweep`` has both ("tf32x3-fma").
TILED_EXP = {"forward": "mufu", "backward": "mufu"}
#: (BLOCK_P pixels per dot, num_warps) per direction and padded K, from the sweep on an
#: H200 of the kernels' previous form (``bench/bench_regime.py --sweep``,
#: results/bench_regime_sweep.csv) among the blocks that compile for sm_80 and sm_90
#: without spills (``make kernels-report``).
#: "<direction>-fma": where the FMA exp2 (``TILED_EXP``) needs a smaller block: its
#: polynomial holds more registers, and the 64-bin backward's 32-pixel block spilled 72 bytes
#: for sm_80 under Triton 3.6 (none under 3.9).
TILED_CONFIGS = {
    "forward": {16: (32, 4), 32: (32, 4), 64: (32, 4), 128: (16, 8)},
    "backward": {16: (64, 4), 32: (64, 4), 64: (32, 4)},
    "backward-fma": {64: (16, 4)},
}
#: The auto rule: the tiled path up to this many bins, the scatter path above (both
#: directions). Measured on an H200 (Triton 3.6), R1 (160x192x224, sigma 1), with the tiled
#: kernels' previous form (``tiled.py``): at K = 32 they take 1.1 ms forward and 0.7 ms
#: backward against 3.1 and 1.6 ms for the whole scatter call; at K = 64 the tiled tf32x3
#: forward took 5.5 ms or more and its backward 2.4 ms, both slower than scatter (3.1 and
#: 1.6 ms). bench/results/bench_regime*.csv. To be measured again for the current form.
AUTO_TILED_BINS = 32
#: Persistent programs per multiprocessor in the tiled kernels (per row: divided by B).
TILED_PROGRAMS_PER_SM = 4
#: Bytes of per-program partial histograms the tiled forward may allocate.
TILED_PARTIAL_BYTES = 64 << 20
#: Multiprocessors assumed where torch cannot say (CPU tensors in the interpreter).
DEFAULT_SMS = 4

#: The span forward (``tiled._joint_span_fwd_kernel``, forced only: not yet timed): (T, the
#: sub-tile's bins per axis; BLOCK_P; num_warps). Registers for sm_90 (Triton 3.9, tf32x3):
#: 149 at (32, 32, 4), 231 at (32, 64, 4), 201 at (32, 64, 8), 236 at (64, 64, 8); (32, 128,
#: 8) spills.
SPAN_CONFIG = (32, 32, 4)

METHODS = ("auto", "tiled", "scatter", "span", "span-sorted")
#: The active ``forced_method`` blocks, [(token, method)], the most recently entered last.
_forced = []


def _forced_now():
    """The method of the most recently entered active ``forced_method`` block, else "auto"."""
    return _forced[-1][1] if _forced else "auto"


@contextlib.contextmanager
def forced_method(method):
    """Within the block, the joint-histogram launchers use ``method`` ("tiled" or "scatter";
    "auto": the rule of ``joint_method``) wherever it can serve (tiled: K up to
    ``MAX_TILED_BINS``). "span": the span forward (any K; an experiment, not yet timed on a
    GPU) and the scatter path's backward; "span-sorted": the same on the pixels sorted by
    bin tile first. For tests and benchmarks.

    Process-wide, not thread-local (a CUDA backward runs in autograd's own thread and must
    see it); each launch looks it up, so a backward run after the block takes the rule.
    Blocks that overlap without nesting (threads, asyncio tasks) each end their own part:
    the most recently entered of those still open applies, and "auto" once all have ended."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    entry = (object(), method)
    _forced.append(entry)  # (list appends and deletions are atomic under the GIL)
    try:
        yield
    finally:
        del _forced[next(i for i, e in enumerate(_forced) if e is entry)]


def joint_method(direction, num_bins):
    """ "tiled" or "scatter" for the ``direction`` ("forward" or "backward") of a joint
    histogram of K = ``num_bins``: ``forced_method`` if set (and possible; "span" and
    "span-sorted" for the forward, "scatter" for their backward), else the measured rule
    (``AUTO_TILED_BINS``; README, "GPU, the registration regime")."""
    forced = _forced_now()
    if forced.startswith("span"):
        return forced if direction == "forward" else "scatter"
    if int(num_bins) > MAX_TILED_BINS[direction]:
        return "scatter"
    if forced != "auto":
        return forced
    return "tiled" if int(num_bins) <= AUTO_TILED_BINS else "scatter"


@functools.cache
def _multiprocessors(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def tiled_config(direction, num_bins, batch, n, device, exp=None):
    """(KP, BLOCK_P, num_warps, programs per row) of the ``direction`` tiled kernel.

    KP: K padded to a power of two, at least 16 (``tl.dot``'s smallest tile); BLOCK_P and
    num_warps from ``TILED_CONFIGS`` (its "<direction>-fma" entry first where the exp2 is
    ``exp``, default ``TILED_EXP[direction]``, "fma"); programs: ``persistent_programs``.
    """
    kp = max(16, triton_next_power_of_2(num_bins))
    configs = TILED_CONFIGS[direction]
    if (TILED_EXP[direction] if exp is None else exp) == "fma":
        configs = {**configs, **TILED_CONFIGS.get(f"{direction}-fma", {})}
    block_p, num_warps = configs[kp]
    return kp, block_p, num_warps, persistent_programs(num_bins, batch, n, block_p, device)


def span_config(num_bins, batch, n, device):
    """(T, BLOCK_P, num_warps, programs per row) of the span forward: ``SPAN_CONFIG`` and
    ``persistent_programs``."""
    tile, block_p, num_warps = SPAN_CONFIG
    return tile, block_p, num_warps, persistent_programs(num_bins, batch, n, block_p, device)


def persistent_programs(num_bins, batch, n, block_p, device):
    """Programs per row of a persistent histogram kernel: TILED_PROGRAMS_PER_SM on every
    multiprocessor over the batch, at most one per block of ``block_p`` pixels, and
    TILED_PARTIAL_BYTES of K x K fp32 partial histograms in all."""
    if device.type == "cuda":
        sms = _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
    else:
        sms = DEFAULT_SMS
    want = math.ceil(TILED_PROGRAMS_PER_SM * sms / max(1, batch))
    by_memory = TILED_PARTIAL_BYTES // max(1, batch * int(num_bins) ** 2 * 4)
    return max(1, min(want, math.ceil(n / block_p), by_memory))


def kernel_id(name):
    """The integer id of a window kind, with a clear error for an unknown name."""
    try:
        return KERNEL_IDS[name]
    except KeyError:
        raise ValueError(f"kernel must be one of {sorted(KERNEL_IDS)}, got {name!r}") from None


def window_size(kernel, num_bins, sigma):
    """W: how many consecutive bins one pixel touches along an axis (at most ``num_bins``):
    the torch backend's ``mi._torch.window_size`` (5 bins for a gaussian at sigma 0.4, 12 at
    1; 4 for the cubic B-spline, 1 for the box, ceil(2 R + 1) for kornia's windows, 2 for
    MONAI's tie-splitting box), with the kernel name checked."""
    kernel_id(kernel)
    return max(1, _torch.window_size(kernel, float(sigma), int(num_bins)))


def window_param(sigma, *kernels):
    """The kernels' scalar ``c_k`` for the window kinds of one launch: 1 / (2 sigma^2) when a
    gaussian is among them, the radius ``sigma`` for kornia's kinds (``RADIUS_KINDS``); the
    others ignore it. One launch cannot mix the two meanings."""
    gauss, radius = "gaussian" in kernels, any(k in RADIUS_KINDS for k in kernels)
    if gauss and radius:
        raise ValueError(f"one launch cannot mix a gaussian with a radius window, got {kernels}")
    return 1.0 / (2.0 * float(sigma) ** 2) if gauss else float(sigma)


def block_sizes(w_cols):
    """(BLOCK_N, BLOCK_W, num_warps) for a window of ``w_cols`` bins along the tile's columns.

    BLOCK_W covers the window (padded to a power of two, masked) up to MAX_BLOCK_W, a
    wider one is walked in chunks of CHUNK_W;
    BLOCK_N pixels fill a tile of about TILE_ELEMENTS, so registers per thread stay flat
    whatever W is (the spill-free condition the AOT report checks).
    """
    block_w = triton_next_power_of_2(w_cols)
    block_w = block_w if block_w <= MAX_BLOCK_W else CHUNK_W
    block_n = max(MIN_BLOCK_N, min(MAX_BLOCK_N, TILE_ELEMENTS // block_w))
    return block_n, block_w, NUM_WARPS


def num_replicas(num_blocks, batch, elements, itemsize, max_replicas):
    """How many privatised copies of a (batch, elements) output the forward accumulates into:
    enough for REPLICA_CELLS cells per row (at least MIN_REPLICAS), at most ``max_replicas``,
    one per program, and REPLICA_BYTES in all."""
    by_memory = REPLICA_BYTES // max(1, batch * elements * itemsize)
    by_cells = max(MIN_REPLICAS, REPLICA_CELLS // max(1, elements))
    return int(max(1, min(max_replicas, num_blocks, by_memory, by_cells)))


def fixed_point_bits(n):
    """Fraction bits of the deterministic forward's int64 accumulator for ``n`` pixels per row.

    Every contribution is scaled to at most 1 (m is divided by its row maximum, windows peak
    at 1), so a bin's sum is at most n * 2**bits; bits = min(32, 62 - ceil(log2 n)) keeps
    that below 2**62, a factor 2 clear of int64 overflow.
    """
    need = max(0, math.ceil(math.log2(max(1, int(n)))))
    return min(FIXED_POINT_BITS, 62 - need)


def triton_next_power_of_2(n):
    """Smallest power of two >= n (as ``triton.next_power_of_2``, without importing Triton)."""
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def use_deterministic(deterministic):
    """The forward is deterministic when asked, or when torch is in deterministic mode."""
    return bool(deterministic) or torch.are_deterministic_algorithms_enabled()


def on_device(t):
    """A context that makes t's CUDA device current (Triton launches on the *current* one, so
    a tensor on cuda:1 needs cuda:1 current); a no-op for CPU tensors (TRITON_INTERPRET=1)
    or when it already is."""
    if t is not None and t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def ensure_contiguous(fn):
    """Make every tensor argument contiguous and run on the tensors' CUDA device (``on_device``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = [a.contiguous() if isinstance(a, torch.Tensor) else a for a in args]
        kwargs = {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        first = next((a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor)), None)
        with on_device(first):
            return fn(*args, **kwargs)

    return wrapper


#: Rows (histograms) per launch: the kernels put them on grid axis 1, which CUDA caps here.
MAX_ROWS = 65535


def over_row_chunks(fn):
    """A launcher for any number of rows: more than ``MAX_ROWS`` (the patches of local MI on a
    volume, a large batch) run as launches of ``MAX_ROWS`` rows, whose results are
    concatenated. The rows are the first dimension of every positional tensor holding B of
    them (the first positional argument's count: u, v, m, grad) and of ``ranges`` (B, 2)
    entries; a (1, 2) range is shared by all."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        rows = args[0].shape[0]
        if rows <= MAX_ROWS:
            return fn(*args, **kwargs)

        def part(t, lo, hi):
            return t[lo:hi] if isinstance(t, torch.Tensor) and t.ndim and t.shape[0] == rows else t

        outs = []
        for lo in range(0, rows, MAX_ROWS):
            hi = min(lo + MAX_ROWS, rows)
            kw = dict(kwargs)
            if kw.get("ranges") is not None:
                kw["ranges"] = [part(r, lo, hi) for r in kw["ranges"]]
            outs.append(fn(*[part(a, lo, hi) for a in args], **kw))
        if isinstance(outs[0], tuple):
            return tuple(None if o[0] is None else torch.cat(o) for o in zip(*outs))
        return torch.cat(outs)

    return wrapper


SAMPLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_inputs(u, m, num_bins, sigma, v=None):
    """Cheap launcher-side checks (the op validates user input; these catch wiring bugs)."""
    for name, t in (("u", u), ("v", v), ("m", m)):
        if t is None:
            continue
        allowed = (torch.float32,) if name == "m" else SAMPLE_DTYPES
        if t.dtype not in allowed:
            raise TypeError(f"{name} must have a dtype in {allowed} (the op upcasts), got {t.dtype}")
        if t.dim() != 2 or t.shape != u.shape:
            raise ValueError(f"{name} must have the shape (B, N) of u {tuple(u.shape)}, got {tuple(t.shape)}")
        if t.device != u.device:
            raise ValueError(f"{name} is on {t.device}, u on {u.device}")
    if int(num_bins) < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    if int(num_bins) ** 2 >= 2**31:
        raise ValueError(f"num_bins**2 must be < 2**31 (int32 bin offsets), got {num_bins}")
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if u.shape[0] > MAX_ROWS:
        raise ValueError(
            f"at most {MAX_ROWS} rows per launch (grid axis 1; see over_row_chunks), got {u.shape[0]}"
        )


def row_ranges(ranges, u, count):
    """[(ranges tensor, row stride)] * count for the kernels' MAP arguments.

    ``ranges``: None (u is in bin coordinates: the kernels do not read them; u stands in
    for the pointer) or ``count`` float32 tensors of shape (B, 2) or (1, 2), [lo, hi] per
    row; a single row is shared by all rows (stride 0).
    """
    if ranges is None:
        return [(u, 0)] * count
    if len(ranges) != count:
        raise ValueError(f"ranges must hold {count} tensors, got {len(ranges)}")
    out = []
    for r in ranges:
        if r.dtype != torch.float32 or r.dim() != 2 or r.shape[1] != 2 or r.shape[0] not in (1, u.shape[0]):
            raise ValueError(f"a range must be float32 of shape (1, 2) or ({u.shape[0]}, 2), got {r.dtype} "
                             f"{tuple(r.shape)}")  # fmt: skip
        if r.device != u.device:
            raise ValueError(f"ranges are on {r.device}, u on {u.device}")
        r = r.contiguous()
        out.append((r, 2 if r.shape[0] > 1 else 0))
    return out


def forward_scales(m, batch, n, fixed, device):
    """(m multiplier per row (B,) fp32 or None, fixed-point unit 2**bits, back-scale per row or None).

    In fixed point a contribution m w_u w_v is scaled by 1 / max|m| of its row so that it is
    at most 1, and the int64 sum is multiplied back by max|m| / 2**bits (the exact inverse
    of the float32 multiplier used, so the only errors are the per-contribution rounding).
    """
    if not fixed:  # p_ms is not read: no allocation, no launch
        return None, 1.0, None
    bits = fixed_point_bits(n)
    if m is None:
        m_mul = torch.ones(batch, dtype=torch.float32, device=device)
    else:
        # 2**-100: an all-zero row must not give 1/0 (its contributions are 0 anyway)
        m_mul = 1.0 / m.abs().amax(1).clamp_min(2.0**-100)
    back = (1.0 / m_mul.double()) * 2.0**-bits
    return m_mul, float(2.0**bits), back


def finish_forward(out, back):
    """Sum the replicas (exact in int64) and, in fixed point, convert back to float32."""
    total = out[0] if out.shape[0] == 1 else out.sum(0)
    if back is None:
        return total
    return (total.double() * back.view(-1, *([1] * (total.dim() - 1)))).float()
