"""``mi.kernels`` for a source checkout imported from its root.

``python`` run in the repository after ``pip install .`` (not editable) finds the checkout's
``mi/`` before the installed copy; an install maps ``mi.kernels`` from ``../kernels``, which
nothing maps here. When nothing else provides ``mi.kernels``, this loads ``kernels/`` beside
the package under that name (imported first by ``mi/__init__.py``).
"""

import importlib.util
import os
import sys

_PARENT = __name__.rpartition(".")[0]

if importlib.util.find_spec(f"{_PARENT}.kernels") is None:
    _src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    _init = os.path.join(_src, "__init__.py")
    if os.path.isfile(_init):
        _spec = importlib.util.spec_from_file_location(
            f"{_PARENT}.kernels", _init, submodule_search_locations=[_src]
        )
        _module = importlib.util.module_from_spec(_spec)
        sys.modules[_spec.name] = _module
        _spec.loader.exec_module(_module)
        sys.modules[_PARENT].kernels = _module  # (what an import sets on the parent)
