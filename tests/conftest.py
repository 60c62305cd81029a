"""Test-session setup shared by every test module.

The Triton kernels are decorated when ``kernels`` is first imported, and Triton reads ``TRITON_INTERPRET`` then;
setting it here, before any test module imports ``kernels`` or ``triton``, runs them on the CPU under the
interpreter (see NOTE [the Triton interpreter] in ``kernels/backend.py``). ``setdefault`` lets a GPU runner pass
``TRITON_INTERPRET=0`` to test the compiled kernels instead.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
