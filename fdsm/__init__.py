"""fdsm: finite-difference score matching, and the exact and FD directional derivatives it is built on.

Public names (DESIGN.md): ``Stencil``, ``central_stencil``, ``stencil`` (paper section 3.2), and
``directional_derivative`` with its method registry ``METHODS`` and the float64 reference ``float64_reference``.
"""

from fdsm.derivatives import METHODS, directional_derivative, float64_reference
from fdsm.fd import streams_backend
from fdsm.stencils import Stencil, central_stencil, stencil

__all__ = [
    "METHODS",
    "Stencil",
    "central_stencil",
    "directional_derivative",
    "float64_reference",
    "stencil",
    "streams_backend",
]
