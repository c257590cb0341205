"""Pure-torch twins of the Warp kernels in this package.

Each twin has the same signature and semantics as its Warp op and is differentiated by torch autograd.
Tests compare the Warp ops against these; the renderer can run on them with ``backend="torch"``.
"""
