"""fdsm: finite-difference score matching, and the exact and FD directional derivatives it is built on."""
