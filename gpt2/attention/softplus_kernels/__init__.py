"""The Triton kernels of fused softplus attention; :mod:`gpt2.attention.softplus_triton` launches them and
describes their math.

``common`` holds the constants, the autotune configs and the building blocks the kernels share; ``forward``
the forward pass and the recompute of rows whose weights underflow; ``decode`` the split-K decode;
``backward`` the dK/dV and dQ passes.
"""
