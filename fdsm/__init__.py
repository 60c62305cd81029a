"""fdsm: finite-difference score matching, and the exact and FD directional derivatives it is built on.

Public names (DESIGN.md): ``Stencil``, ``central_stencil``, ``stencil`` (paper section 3.2), and
``directional_derivative`` with its method registry ``METHODS`` and the float64 reference ``float64_reference``;
``fd_estimate`` (FD with its automatic step and error estimate, ``FDEstimate``, ``FDAccuracyWarning``) and
``richardson_stencil`` (``fdsm.fd_error``).
"""

from fdsm.derivatives import METHODS, directional_derivative, float64_reference
from fdsm.fd import streams_backend
from fdsm.fd_error import FDAccuracyWarning, FDEstimate, fd_estimate, richardson_stencil
from fdsm.registry import NotSupported
from fdsm.stencils import Stencil, central_stencil, stencil

__all__ = [
    "METHODS",
    "FDAccuracyWarning",
    "FDEstimate",
    "NotSupported",
    "Stencil",
    "central_stencil",
    "directional_derivative",
    "fd_estimate",
    "float64_reference",
    "richardson_stencil",
    "stencil",
    "streams_backend",
]
