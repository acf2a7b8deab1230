"""How training uses the hardware: distribution strategy, precision policy and XLA, decided from what
is visible (GPUs, ``TF_CONFIG``) and the train config, as plain functions that tests can drive on CPU.

- Strategy: ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names a cluster with more than one
  worker, ``MirroredStrategy`` when one process sees several GPUs, else TensorFlow's default.
- Precision: ``auto`` means ``mixed_bfloat16`` on a GPU (compute in bf16, variables in float32), and on
  a CPU whose oneDNN kernels run bf16 on AMX tiles (``bf16_kernels``: Intel Sapphire Rapids and later,
  oneDNN on and not limited below AMX), where they train faster than float32 at the same accuracy
  (benchmarks/RESULTS.md); ``float32`` on other CPUs, AVX512-BF16 alone included (no faster there, so
  not worth bf16's coarser numbers).
- XLA: ``auto`` compiles the train step (``jit_compile``) on a GPU only.
- Augmentation: ``auto`` applies it per batch inside the train step on a GPU (``with_augmentation``), so
  it runs on the device next to the model, and in the tf.data pipeline on a CPU, where it overlaps with
  training in parallel threads.

Exports stay float32 whatever the training precision: ``float32_copy`` rebuilds the model with float32
layers and copies the weights (ONNX Runtime refuses bfloat16 graphs).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgflow.config.stages import PRECISIONS
from imgflow.runtime.errors import ConfigError


@dataclass(frozen=True)
class Plan:
    strategy: str  # "default" | "mirrored" | "multi_worker"
    precision: str  # a Keras dtype policy name
    jit_compile: bool
    workers: int = 1
    task_index: int = 0
    augment_on_device: bool = False  # augmentation inside the train step (on the GPU), not in tf.data

    @property
    def chief(self) -> bool:
        """Whether this process writes the outputs (worker 0 of a cluster, or the only process)."""
        return self.task_index == 0


def plan(
    precision: str,
    jit_compile: str | bool,
    gpus: Sequence[str],
    tf_config: str | None,
    augment_on: str = "auto",
    cpu: frozenset[str] = frozenset(),
    environ: Mapping[str, str] | None = None,
) -> Plan:
    """The training plan for ``gpus`` (visible GPU names), a ``TF_CONFIG`` value (or None), the CPU's
    feature flags (``cpu_flags``) and the environment that steers oneDNN (``bf16_kernels``)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if augment_on not in ("auto", "host", "device"):
        raise ConfigError(f"augment_on must be auto, host or device, got {augment_on!r}")
    cluster: Mapping[str, Any] = json.loads(tf_config) if tf_config else {}
    workers = len(cluster.get("cluster", {}).get("worker", []))
    task = cluster.get("task", {})
    if workers > 1:
        strategy = "multi_worker"
    elif len(gpus) > 1:
        strategy = "mirrored"
    else:
        strategy = "default"
    on_gpu = bool(gpus)
    fast_bf16 = on_gpu or bf16_kernels(cpu, os.environ if environ is None else environ)
    resolved = ("mixed_bfloat16" if fast_bf16 else "float32") if precision == "auto" else precision
    jit = on_gpu if jit_compile == "auto" else bool(jit_compile)
    index = int(task.get("index", 0)) if task.get("type", "worker") == "worker" else 0
    on_device = augment_on == "device" or (augment_on == "auto" and on_gpu)
    return Plan(strategy, resolved, jit, max(1, workers), index, on_device)


def bf16_kernels(cpu: frozenset[str], environ: Mapping[str, str]) -> bool:
    """Whether TensorFlow's oneDNN kernels will run bfloat16 on AMX tiles here: the CPU has them, oneDNN
    is on (``TF_ENABLE_ONEDNN_OPTS`` not 0) and not limited to an instruction set below AMX
    (``ONEDNN_MAX_CPU_ISA``, such as AVX2). Without them bfloat16 is emulated, and slower than float32."""
    if "amx_bf16" not in cpu:
        return False
    if environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() in ("0", "false", "off", "no"):
        return False
    isa = environ.get("ONEDNN_MAX_CPU_ISA", "ALL").strip().upper()
    return isa in ("ALL", "DEFAULT", "") or "AMX" in isa


def gpus_without_tensorflow(environ: Mapping[str, str] | None = None, driver: Path = Path("/proc/driver/nvidia/gpus")) -> list[str]:
    """The GPUs TensorFlow would see, told without importing it: NVIDIA's driver's list, narrowed by
    ``CUDA_VISIBLE_DEVICES``. For keys, which ``imgflow plan`` computes without TensorFlow."""
    environ = os.environ if environ is None else environ
    found = sorted(path.name for path in driver.iterdir()) if driver.is_dir() else []
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        wanted = [part.strip() for part in visible.split(",") if part.strip() and not part.strip().startswith("-")]
        found = found[: len(wanted)]
    return [f"/physical_device:GPU:{index}" for index in range(len(found))]


def key_plan(precision: str, jit_compile: str | bool, augment_on: str = "auto") -> Plan:
    """The plan this machine would train with, resolved without TensorFlow: what a train key holds, so
    that a bfloat16 model is never reused as the float32 one another machine would train."""
    return plan(precision, jit_compile, gpus_without_tensorflow(), os.environ.get("TF_CONFIG"), augment_on, cpu_flags())


def current_plan(precision: str, jit_compile: str | bool, augment_on: str = "auto") -> Plan:
    """The plan for this process: its visible GPUs and its ``TF_CONFIG``."""
    import tensorflow as tf

    gpus = [device.name for device in tf.config.list_physical_devices("GPU")]
    return plan(precision, jit_compile, gpus, os.environ.get("TF_CONFIG"), augment_on, cpu_flags())


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """This machine's CPU feature flags (``avx512_bf16``, ``amx_bf16``, ...) from Linux's ``cpuinfo``;
    none where it has no such file."""
    if not cpuinfo.is_file():
        return frozenset()
    for line in cpuinfo.read_text().splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def with_augmentation(model: Any, augmenter: Any) -> Any:
    """A training wrapper that augments each batch inside the train step, where the model runs (the
    GPU), then calls ``model``; the random layers are active only in training. ``model`` itself is what
    gets saved and exported."""
    import keras

    if isinstance(model.input, dict):  # image + text: augment the pixels only
        inputs = {name: keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype, name=name) for name, tensor in model.input.items()}
        return keras.Model(inputs, model({**inputs, "pixels": augmenter(inputs["pixels"])}), name=f"train_{model.name}")
    inputs = keras.Input(shape=model.input_shape[1:], name="pixels")
    return keras.Model(inputs, model(augmenter(inputs)), name=f"train_{model.name}")


def unwrap(model: Any) -> Any:
    """The model inside a ``with_augmentation`` wrapper (the model itself when not wrapped)."""
    import keras

    if not model.name.startswith("train_"):
        return model
    return next(layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name == model.name[len("train_") :])


def make_strategy(chosen: Plan) -> Any:
    """The ``tf.distribute`` strategy of a plan (create it before any other TensorFlow op)."""
    import tensorflow as tf

    if chosen.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if chosen.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def float32_copy(model: Any) -> Any:
    """The same model with float32 layers and the same weights, compiled as ``model`` is (its loss,
    metrics and optimizer settings, without the optimizer's state), so it evaluates as a float32
    model trained in float32 would."""
    config = model.get_config()

    def to_float32(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: ("float32" if key == "dtype" and _is_policy(value) else to_float32(value)) for key, value in node.items()}
        if isinstance(node, list):
            return [to_float32(value) for value in node]
        return node

    copy = model.__class__.from_config(to_float32(config))
    copy.set_weights(model.get_weights())
    if model.compiled:
        copy.compile_from_config(model.get_compile_config())
    return copy


def _is_policy(value: Any) -> bool:
    """A layer's ``dtype`` entry: a policy name or a serialized DTypePolicy."""
    if isinstance(value, str):
        return value.startswith("mixed_") or value in ("float32", "bfloat16", "float16")
    return isinstance(value, dict) and value.get("class_name", "").endswith("DTypePolicy")


def fit_multi_worker(
    model: Any,
    strategy: Any,
    train_data: Any,
    *,
    epochs: int,
    initial_epoch: int,
    steps_per_epoch: int,
    global_batch: int,
    validation_data: Any = None,
    validation_steps: int | None = None,
    callbacks: Sequence[Any] = (),
    class_weight: Mapping[int, float] | None = None,
) -> None:
    """``model.fit`` for ``MultiWorkerMirroredStrategy``, as a custom training loop.

    Keras 3.15's ``fit`` cannot run under a multi-worker strategy (keras-team/keras#20585: it reduces
    the first batch and then scalar metrics along axis 0, which collective all-reduce refuses), so the
    multi-worker path steps the compiled model's optimizer itself: per-replica loss averaged over the
    global batch, gradients all-reduced by the strategy. Callbacks get ``on_epoch_end`` with the same
    logs ``fit`` would give (loss, accuracy, val_loss, val_accuracy).
    """
    import keras
    import tensorflow as tf

    losses = keras.losses.SparseCategoricalCrossentropy(reduction=None)
    weights = None
    if class_weight:
        weights = tf.constant([class_weight.get(i, 1.0) for i in range(model.output_shape[-1])], tf.float32)

    def replica_step(images: Any, labels: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            per_example = losses(labels, probabilities)
            if weights is not None:
                per_example = per_example * tf.gather(weights, labels)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        gradients = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss, _correct(labels, probabilities)

    def replica_eval(images: Any, labels: Any) -> tuple[Any, Any]:
        probabilities = model(images, training=False)
        return tf.reduce_sum(losses(labels, probabilities)), _correct(labels, probabilities)

    @tf.function
    def train_step(iterator: Any) -> tuple[Any, Any]:
        loss, correct = strategy.run(replica_step, args=next(iterator))
        return strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", correct, axis=None)

    @tf.function
    def eval_step(iterator: Any) -> tuple[Any, Any]:
        loss, correct = strategy.run(replica_eval, args=next(iterator))
        return strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", correct, axis=None)

    iterator = iter(strategy.experimental_distribute_dataset(train_data))
    for callback in callbacks:
        callback.set_model(model)
    for epoch in range(initial_epoch, epochs):
        loss_sum, correct = 0.0, 0.0
        for _ in range(steps_per_epoch):
            loss, hits = train_step(iterator)
            loss_sum += float(loss)
            correct += float(hits)
        logs = {"accuracy": correct / (steps_per_epoch * global_batch), "loss": loss_sum / steps_per_epoch}
        if validation_data is not None:
            val_iterator = iter(strategy.experimental_distribute_dataset(validation_data))
            total_loss, total_correct, seen = 0.0, 0.0, 0
            for _ in range(validation_steps or 0):
                loss, hits = eval_step(val_iterator)
                total_loss, total_correct = total_loss + float(loss), total_correct + float(hits)
            seen = sum(int(n) for n in _count(validation_data, validation_steps))
            logs.update(val_loss=total_loss / max(seen, 1), val_accuracy=total_correct / max(seen, 1))
        print(f"epoch {epoch + 1}/{epochs} - " + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()), flush=True)
        for callback in callbacks:
            callback.on_epoch_end(epoch, logs)


def _correct(labels: Any, probabilities: Any) -> Any:
    import tensorflow as tf

    predicted = tf.argmax(probabilities, axis=-1, output_type=labels.dtype)
    return tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))


def _count(dataset: Any, steps: int | None) -> list[int]:
    """The examples in the first ``steps`` batches of an evaluation dataset."""
    return [int(labels.shape[0]) for _, labels in dataset.take(steps or 0)]
