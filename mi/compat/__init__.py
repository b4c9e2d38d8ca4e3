"""Drop-in replacements for the MI losses of MONAI and kornia, built on this library's op.

Switching is one import: the same class or function, arguments, defaults and numbers
(values and gradients to float32 rounding, tested against the real packages), but the
joint histogram comes from the fused op (no pixels x bins tensor; Triton on a GPU).

* ``mi.compat.monai.GlobalMutualInformationLoss``: MONAI 1.6's loss.
* ``mi.compat.kornia.mutual_information_loss`` (and ``_2d``, ``_3d``,
  ``normalized_mutual_information_loss*``): kornia 0.9's functions.

Neither package is needed to use them. Where the originals return NaN (a constant image in
MONAI's "b-spline" mode, values near the float limit), these give a finite value or a
clear error; see each module.
"""

from . import kornia, monai

__all__ = ["kornia", "monai"]
