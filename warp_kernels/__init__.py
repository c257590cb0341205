"""NVIDIA Warp kernels (CPU and CUDA) with torch autograd wrappers; pure-torch twins in ``reference``."""
