"""Running an exported ONNX model with ONNX Runtime: one way to open and batch it, for validation
(the champion), export (parity and int8 checks) and batch prediction alike.

A model with text takes "tokens" besides "pixels": token ids from the ``vocabulary.txt`` that lies next
to its ``.onnx`` file, through ``imgflow.data.text.TextEncoder`` (the encoder training used), so callers pass
texts, never ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgflow.runtime import cpus
from imgflow.runtime.errors import ConfigError


def onnx_session(model_path: str | Path | bytes, keep_memory: bool = True, threads: int | None = None):
    """An ONNX Runtime session on the CPU (the exports are checked there; a GPU is for training).

    ``keep_memory=False`` turns off ONNX Runtime's memory arena, which otherwise keeps the largest
    batch's buffers for the session's life: for the one-off evaluations inside a pipeline run, where
    each session would hold hundreds of MB of large images' activations. Batch prediction keeps it.
    ``threads``: the session's threads for one operator (default: the CPU time the process has,
    ``imgflow.runtime.cpus``), fewer when several processes share it.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = keep_memory
    options.intra_op_num_threads = threads or cpus.threads()
    model = model_path if isinstance(model_path, bytes) else str(model_path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


# The int8 dot-product instructions ONNX Runtime's x86 kernels (MLAS) dispatch to, best first, by the
# /proc/cpuinfo flag that has them.
INT8_INSTRUCTIONS = (("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2, no VNNI"))


def int8_instructions(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """Which instructions this CPU's int8 matrix products run on, in words: what an int8 model's
    accuracy check measured. Without VNNI an x86 CPU multiplies 8-bit pairs into 16-bit sums that
    saturate (``vpmaddubsw``), so a model checked on a VNNI machine can lose accuracy where it is
    served: the export quantizes its weights to 7 bits (``reduce_range``) so that no sum can.
    "unknown" where /proc/cpuinfo does not say."""
    import platform

    try:
        text = cpuinfo.read_text()
    except OSError:
        return f"{platform.machine() or 'unknown'}, unknown"
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    if not flags:  # not x86: ARM's lines say "Features"
        return f"{platform.machine() or 'unknown'}, its own int8 kernels"
    return "x86-64, " + next((words for flag, words in INT8_INSTRUCTIONS if flag in flags), "SSE, no AVX2")


def quantize_int8(float_path: Path, int8_path: Path, feeds: Iterable[dict[str, np.ndarray]], reduce_range: bool = True) -> None:
    """Write ``float_path``'s model quantized to int8 to ``int8_path``: static QDQ, per channel, its
    ranges calibrated on ``feeds`` (input name -> batch). ``reduce_range`` keeps the weights to 7 bits,
    where ONNX Runtime's int8 products cannot saturate on x86 CPUs without VNNI (``int8_instructions``)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = iter(feeds)

    class Batches(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    scratch = int8_path.with_name(f"{int8_path.stem}.pre-quant.onnx")
    quant_pre_process(str(float_path), str(scratch), skip_symbolic_shape=True)  # onnx shape inference suffices
    try:
        quantize_static(str(scratch), str(int8_path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range)
    finally:
        scratch.unlink()


def with_penultimate(path: Path) -> bytes:
    """The ONNX model at ``path`` with one more output, ``embedding``'s source: the input of its last
    dense layer (its last MatMul or Gemm, in the graph's topological order), the features the classifier
    reads. For drift checks (``imgflow.serving.views``): where the model sees new data land."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    last = next((node for node in reversed(graph.node) if node.op_type in ("MatMul", "Gemm")), None)
    if last is None:
        raise ConfigError(f"{path} has no dense layer (MatMul or Gemm): it has no penultimate layer to embed with")
    known = {info.name: info for info in graph.value_info}
    name = last.input[0]
    graph.output.append(known[name] if name in known else onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return bytes(model.SerializeToString())


class OnnxModel:
    """An exported model (``model.onnx`` or its int8 variant) ready to predict from pixels and, when it
    takes text, texts."""

    def __init__(self, path: str | Path, keep_memory: bool = True, threads: int | None = None, embeddings: bool = False) -> None:
        self.path = Path(path)
        # ``embeddings``: also its penultimate layer (``embed``).
        self.session = onnx_session(with_penultimate(self.path) if embeddings else self.path, keep_memory, threads)
        inputs = {spec.name: spec for spec in self.session.get_inputs()}
        self.image_shape = list(inputs["pixels"].shape[1:])
        self.encoder = None
        if "tokens" in inputs:
            from imgflow.data.text import VOCABULARY_FILE, TextEncoder, read_vocabulary

            vocabulary = self.path.parent / VOCABULARY_FILE
            if not vocabulary.is_file():
                raise ConfigError(f"{self.path} takes text, but its vocabulary {vocabulary} is missing")
            self.encoder = TextEncoder(read_vocabulary(vocabulary), int(inputs["tokens"].shape[1]))

    @property
    def takes_text(self) -> bool:
        return self.encoder is not None

    def feeds(self, images: np.ndarray, texts: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The session's inputs for a batch; a text model given no texts sees none (empty text)."""
        feeds = {"pixels": images.astype(np.float32)}
        if self.encoder is not None:
            feeds["tokens"] = self.encoder.ids(list(texts) if texts is not None else [""] * len(images))
        return feeds

    def __call__(self, images: np.ndarray, texts: Sequence[str] | None = None, batch_size: int = 512) -> np.ndarray:
        """Class probabilities for raw pixels (N, H, W, C) in 0..255 (and their texts), in batches."""
        outputs = [
            self.session.run(
                None, self.feeds(images[start : start + batch_size], None if texts is None else texts[start : start + batch_size])
            )[0]
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(outputs) if outputs else np.zeros((0, self.session.get_outputs()[0].shape[-1]), np.float32)

    def embed(self, images: np.ndarray, texts: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The penultimate layer's features (float32, one row per image) and the class probabilities of a
        batch; the model must be opened with ``embeddings=True``."""
        probabilities, features = self.session.run(None, self.feeds(images, texts))[:2]
        return np.asarray(features, np.float32).reshape(len(images), -1), np.asarray(probabilities)


def onnx_predict(model: Any, images: np.ndarray, batch_size: int = 512, texts: Sequence[str] | None = None) -> np.ndarray:
    """Class probabilities from an ONNX export (a path or an ``OnnxModel``) for raw pixels (N, H, W, C)."""
    model = model if isinstance(model, OnnxModel) else OnnxModel(model, keep_memory=False)
    return model(images, texts, batch_size)
