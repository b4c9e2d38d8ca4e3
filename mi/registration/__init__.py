"""Rigid and affine registration by maximising mutual information, 2-D and 3-D, in physical space.

Parts (conventions in :mod:`mi.registration.space`):

* ``space``: image geometry (spacing, origin, direction), index <-> physical maps, reading
  inputs (SimpleITK images, files, DICOM folders, tensors), resampling.
* ``transforms``: the rigid/affine model, ITK transform files (read and write).
* ``optim``: :func:`register`: pyramid, sampling, Adam, convergence; the result.
* ``bspline``, ``velocity``, ``deformable``: ITK's cubic B-spline free-form deformation, the
  diffeomorphism of a B-spline velocity (scaling and squaring), and
  :func:`register_deformable` (either, after an affine stage).
* ``io``: the outputs of ``mi register`` (warped image with the fixed geometry, transform,
  picture) and :func:`run_cli`.
* ``demo``: demo pairs with known transforms; ``brain``: a real brain MRI pair (nilearn's
  MNI template; a test/bench extra).
"""

from .deformable import DeformableResult, DiffeomorphicResult, register_deformable
from .demo import demo_pair, demo_volume_pair, transform_error
from .io import RegisterError, load_image, run_cli, save_figure
from .optim import DEFAULT_LOSS, SCORE, RegistrationResult, register, shrink_factors
from .space import Geometry, matrix_to_theta, theta_to_matrix, warp
from .transforms import read_transform, write_transform

__all__ = [
    "register",
    "RegistrationResult",
    "register_deformable",
    "DeformableResult",
    "DiffeomorphicResult",
    "run_cli",
    "load_image",
    "save_figure",
    "RegisterError",
    "demo_pair",
    "demo_volume_pair",
    "transform_error",
    "matrix_to_theta",
    "theta_to_matrix",
    "warp",
    "Geometry",
    "read_transform",
    "write_transform",
    "shrink_factors",
    "DEFAULT_LOSS",
    "SCORE",
]
