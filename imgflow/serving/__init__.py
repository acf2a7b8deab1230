"""Models out: batch prediction and ONNX Runtime inference."""
