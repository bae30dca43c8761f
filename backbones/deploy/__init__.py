"""Inference-time transforms of a trained model: BatchNorm folding and fused kernels
(``fuse``), ONNX export, ONNX Runtime inference and int8 quantization."""
