"""``mi.register``: the registration functions, kept importable here (they live in
:mod:`mi.registration`, whose parts name what they do)."""

from .registration import *  # noqa: F403
from .registration import __all__  # noqa: F401
