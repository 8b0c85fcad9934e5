"""Numba kernels: leaf modules with no imports from the rest of fastinfer."""
