"""Running an exported ONNX model with ONNX Runtime: one way to open and batch it, for validation
(the champion), export (parity and int8 checks) and batch prediction alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def onnx_session(model_path: str | Path, keep_memory: bool = True):  # noqa: ANN201 - onnxruntime.InferenceSession
    """An ONNX Runtime session on the CPU (the exports are checked there; a GPU is for training).

    ``keep_memory=False`` turns off ONNX Runtime's memory arena, which otherwise keeps the largest
    batch's buffers for the session's life: for the one-off evaluations inside a pipeline run, where
    each session would hold hundreds of MB of large images' activations. Batch prediction keeps it.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = keep_memory
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def onnx_predict(model: Any, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Class probabilities from an ONNX export (a path or an open session) for raw pixels (N, H, W, C)."""
    session = model if hasattr(model, "run") else onnx_session(model, keep_memory=False)
    input_name = session.get_inputs()[0].name
    outputs = [
        session.run(None, {input_name: images[start : start + batch_size].astype(np.float32)})[0]
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0, session.get_outputs()[0].shape[-1]), np.float32)
