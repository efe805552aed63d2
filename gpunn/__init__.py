"""gpunn: neural networks with hand-written backprop on NumPy (CPU) or CuPy (CUDA)."""
__version__ = "0.1.0"
