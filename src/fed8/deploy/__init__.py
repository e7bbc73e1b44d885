"""8-bit deployment: ONNX export, federated calibration, INT8 / FP8 quantization, the accuracy gate, runtimes.

Modules load their heavy dependencies (onnx, onnxruntime, openvino) on first use; import the
one you need (``fed8.deploy.export``, ``calibrate``, ``quantize``, ``gate``, ``runtime``, ...).
"""

__all__: list[str] = []
