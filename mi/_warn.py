"""Warnings attributed to the caller's line, not to the library's line that issues them."""

import os
import sys
import warnings

import torch

# mi's files, and torch's (nn.Module.__call__, autograd, torch.compile sit between a caller and mi)
_SKIP = tuple(
    os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (sys.modules[__package__], torch)
)


def warn(message: str, category: type = UserWarning) -> None:
    """``warnings.warn`` at the first frame outside the ``mi`` and ``torch`` packages (what
    Python 3.12's ``skip_file_prefixes`` does): the warning shows the caller's line however
    deep in the library it was raised, and Python's default filter prints it once per line."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_SKIP):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
