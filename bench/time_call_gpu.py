"""Time the whole public call on a GPU: ``mutual_information(...).sum().backward()``.

    python bench/time_call_gpu.py TAG

8x1x512x512 benchmark images (bench/data.py) at 64 and 256 bins, a fixed and the automatic
value range; ``triton.testing.do_bench`` (median, 20/80 quantiles) in milliseconds. The call
is bound by the host on a GPU (launches and Python), whose speed varies from process to
process on a shared machine, so compare two versions of the library in alternating
processes, each importing its own copy (``PYTHONPATH``), e.g. a baseline from
``git archive REF mi kernels`` with ``kernels`` moved to ``mi/kernels``::

    for i in 1 2 3; do for v in old new; do PYTHONPATH=ab/$v python bench/time_call_gpu.py $v; done; done

The last column names the copy that was imported.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import mi  # noqa: E402


def main():
    tag = sys.argv[1] if len(sys.argv) > 1 else "this"
    x, y = (t.cuda() for t in data.make_pair((8, 1, 512, 512)))
    y.requires_grad_(True)
    for case, k in (("G1", 64), ("G2", 256)):
        for rng in ((0.0, 1.0), "auto"):

            def call(k=k, rng=rng):
                mi.mutual_information(x, y, num_bins=k, sigma=0.5, value_range=rng).sum().backward()

            ms = do_bench(call, grad_to_none=[y], quantiles=[0.5, 0.2, 0.8])
            where = os.path.dirname(os.path.dirname(os.path.abspath(mi.__file__)))
            print(tag, case, rng, "fwd+bwd ms", [round(m, 3) for m in ms], where, flush=True)


if __name__ == "__main__":
    main()
