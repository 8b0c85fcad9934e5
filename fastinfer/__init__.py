"""fastinfer: verified ONNX graphs, numba kernels and batched ONNX Runtime for trading models."""
