"""What the recipe (``imgflow.training.recipe``) plans from, measured: this machine's speed and the data's shape.

``budgeted`` is the train step's config under a time budget: the recipe's plan, from the data stages'
results, ``data_stats`` and ``measure``.

- ``measure``: the speed probe. It trains the small CNN for a few steps on random pixels of the data's
  shape at the smallest and the largest size the recipe could choose (a line in multiplies through the
  two), the residual network once where the data is large enough for it (its fixed part), and, for
  photographs and drawings, times EfficientNet-Lite0's forward pass at two input sizes (a line in pixels). A few seconds on a fast machine, once: the result is cached per machine (CPU
  model, CPU quota, GPUs, precision, TensorFlow's oneDNN settings) under ``<cache>/probe/``, so the
  same data on the same machine plans the same steps, and a rerun reuses the trained model.
- ``data_stats``: the train split's statistics: the shard stage's counts, and the class-mean images'
  symmetry, from the first ``STATS_RECORDS`` train records (cached by the shards' fingerprint).

``cache`` is ``IMGFLOW_CACHE`` (default ``~/.cache/imgflow``): per machine, never in an artifact root.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from imgflow.config import TrainConfig
from imgflow.config.checks import parse_duration
from imgflow.results import ShardInfo, StageResult, shard_files
from imgflow.runtime import cpus
from imgflow.store.artifacts import MANIFEST
from imgflow.store.files import write_json_atomic
from imgflow.store.fingerprint import stable_hash
from imgflow.store.objectstore import cache_root
from imgflow.training.budget import reserve_seconds, training_seconds
from imgflow.training.recipe import FEATURE_SIZES, SYMMETRIC, choose
from imgflow.training.sizing import BATCH, RESNET_RECORDS, RESNET_WIDTHS, SHRUNK_SIZES, WIDTHS, DataStats, Speeds, cnn_macs, resnet9_macs

STATS_RECORDS = 4096  # train records whose class means give the symmetry scores
WARM_STEPS = 2  # steps before timing: the first traces and compiles
TIMED_STEPS = 6  # for the cheapest model; the others get LARGE_TIMED_STEPS: their steps are long enough to time
LARGE_TIMED_STEPS = 3


def cache_dir() -> Path:
    return cache_root() / "probe"


def machine() -> dict[str, Any]:
    """What the probe's speeds depend on besides the model, read without TensorFlow."""
    from imgflow.training.accel import gpus_without_tensorflow, key_plan

    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "unknown CPU")
    plan = key_plan("auto", "auto")
    return {
        "cpu": model,
        "cores": round(cpus.budget().cores, 2),
        "gpus": gpus_without_tensorflow(),
        "precision": plan.precision,
        "jit_compile": plan.jit_compile,
        "tensorflow": _version("tensorflow"),
        "onednn": {name: os.environ.get(name) for name in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA")},
    }


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _extremes(height: int, width: int) -> list[int | None]:
    """The smallest and largest input side the recipe could choose (None: as stored)."""
    side = min(height, width)
    return [SHRUNK_SIZES[-1], SHRUNK_SIZES[0]] if side > SHRUNK_SIZES[0] else [None]


def _measured(stats: DataStats) -> dict[str, Any]:
    """What the probe measures for data of ``stats``'s shape (with this machine, its cache key)."""
    return {
        "shape": [stats.height, stats.width, stats.channels],
        "classes": len(stats.class_counts),
        "batch": BATCH,
        "features": _lite0_available(),  # for glyphs too: the race measures whether ImageNet features help
        "resnet9": stats.train_records >= RESNET_RECORDS,
    }


def cache_path(stats: DataStats) -> Path:
    """Where this machine's speeds for data of ``stats``'s shape are cached (``measure``)."""
    return cache_dir() / f"{stable_hash([machine(), _measured(stats)])[:16]}.json"


def measure(stats: DataStats, *, run: bool = True) -> Speeds | None:
    """This machine's ``Speeds`` for data of ``stats``'s shape: from the cache, else measured now
    (``run``), else None (planning without running anything)."""
    what = _measured(stats)
    here = machine()
    path = cache_path(stats)
    found = _cached(path, ("overhead", "per_mac", "batch", "features", "seconds", "resnet_overhead"), "speed probe: the cached measurement")
    if found is not None:
        return Speeds(
            found["overhead"],
            found["per_mac"],
            found["batch"],
            {int(k): v for k, v in found["features"].items()},
            found["seconds"],
            found["resnet_overhead"],
        )
    if not run:
        return None
    print(f"speed probe: timing training steps on this machine (once; cached in {path.parent})", flush=True)
    started = time.time()
    points = []
    sizes = _extremes(stats.height, stats.width)
    for size, width, timed in ((sizes[0], WIDTHS[0], TIMED_STEPS), (sizes[-1], WIDTHS[-1], LARGE_TIMED_STEPS)):
        shape = (size, size) if size else (stats.height, stats.width)
        seconds = _step(stats, "cnn", size, width, timed) / BATCH
        points.append((cnn_macs(shape, stats.channels, width, len(stats.class_counts)), seconds))
    (small, fast), (large, slow) = points
    per_mac = max(0.0, (slow - fast) / (large - small)) if large > small else 0.0
    overhead = max(1e-7, fast - per_mac * small)
    resnet = None
    if what["resnet9"]:  # its fixed part; its multiplies cost what the CNN's do
        shape = (sizes[0], sizes[0]) if sizes[0] else (stats.height, stats.width)
        macs = resnet9_macs(shape, stats.channels, RESNET_WIDTHS[0], len(stats.class_counts))
        resnet = max(1e-7, _step(stats, "resnet9", sizes[0], RESNET_WIDTHS[0], LARGE_TIMED_STEPS) / BATCH - per_mac * macs)
    features = _feature_speeds() if what["features"] else {}
    speeds = Speeds(overhead, per_mac, BATCH, features, round(time.time() - started, 1), resnet)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        path,
        {
            "overhead": overhead,
            "per_mac": per_mac,
            "batch": BATCH,
            "features": features,
            "resnet_overhead": resnet,
            "machine": here,
            "measured": what,
            "seconds": speeds.seconds,
        },
    )
    lines = [f"{1 / fast:.0f} images/s at {small / 1e6:.1f}M multiplies", f"{1 / slow:.0f} at {large / 1e6:.1f}M"]
    lines += [f"Lite0 features {1 / s:.0f} images/s at {size}" for size, s in sorted(features.items(), reverse=True)[:1]]
    print(f"speed probe: {'; '.join(lines)} ({time.time() - started:.0f} s)", flush=True)
    return speeds


def _cached(path: Path, fields: tuple[str, ...], what: str) -> dict[str, Any] | None:
    """A cached JSON record holding ``fields``, or None when there is none or it cannot be read (then
    it is measured again, and ``what`` is named in the line that says so)."""
    try:
        found = json.loads(path.read_text())
        for name in fields:
            found[name]
        return found
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"{what} {path} cannot be read ({error}); measuring again", flush=True)
        return None


def _lite0_available() -> bool:
    from imgflow.training.weights import LITE0_FILE, installed_lite0, weights_dir

    return (weights_dir() / LITE0_FILE).is_file() or installed_lite0() is not None


def _step(stats: DataStats, family: str, size: int | None, width: int, timed: int) -> float:
    """Seconds per training step of a ``family`` network at batch ``BATCH``, as training runs it
    (precision, XLA, augmentation in tf.data), on random pixels: the mean of ``timed`` steps."""
    import keras
    import numpy as np
    import tensorflow as tf

    from imgflow.training.accel import current_plan
    from imgflow.training.inputs import make_augmenter
    from imgflow.training.models import compile_for_training, make_model, make_resnet9

    chosen = current_plan("auto", "auto")
    keras.mixed_precision.set_global_policy(chosen.precision)
    try:
        build = make_model if family == "cnn" else make_resnet9
        model = build((stats.height, stats.width, stats.channels), len(stats.class_counts), width=width, input_size=size)
        compile_for_training(model, 1e-3, 100, chosen.jit_compile)
        augment = make_augmenter(0.1, 0.0, 0.1, 0)
        assert augment is not None  # shifts and zooms
        pixels = np.random.default_rng(0).integers(0, 256, (BATCH, stats.height, stats.width, stats.channels)).astype("float32")
        labels = np.arange(BATCH) % len(stats.class_counts)
        data = tf.data.Dataset.from_tensors((pixels, labels)).repeat().map(lambda x, y: (augment(x, training=True), y))
        ends: list[float] = []
        timer = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
        model.fit(data, epochs=1, steps_per_epoch=WARM_STEPS + timed, verbose=0, callbacks=[timer])
        clock = ends[WARM_STEPS - 1 :]  # from the end of the last warm-up step
        return (clock[-1] - clock[0]) / (len(clock) - 1)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _feature_speeds() -> dict[int, float]:
    """Seconds per image of Lite0's forward pass at each of ``FEATURE_SIZES``: two measured, the others
    on the line through them in pixels."""
    import keras
    import numpy as np

    from imgflow.training.accel import current_plan
    from imgflow.training.efficientnet import efficientnet_lite0

    chosen = current_plan("auto", "auto")
    keras.mixed_precision.set_global_policy(chosen.precision)
    measured = {}
    try:
        for size in (FEATURE_SIZES[0], FEATURE_SIZES[-1]):
            network = efficientnet_lite0((size, size, 3), include_top=False)
            batch = np.zeros((32, size, size, 3), "float32")
            network.predict(batch, verbose=0)
            started = time.perf_counter()
            network.predict(batch, verbose=0)
            measured[size] = (time.perf_counter() - started) / len(batch)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    (big, slow), (small, fast) = measured.items()
    per_pixel = (slow - fast) / (big * big - small * small)
    return {size: max(fast, fast + per_pixel * (size * size - small * small)) for size in FEATURE_SIZES}


def data_stats(shards: StageResult, *, run: bool = True) -> DataStats | None:
    """The recipe's view of a shard stage's data; the symmetry scores from the cache, else computed now
    (``run``), else None."""
    info = shards.info
    assert isinstance(info, ShardInfo), shards.stage
    height, width, channels = info.image_shape
    path = cache_dir() / f"stats-v2-{shards.fingerprint[:24]}.json"
    symmetry = _cached(path, ("mirror", "turn"), "recipe: the cached data statistics")
    if symmetry is None:
        if not run:
            return None
        symmetry = _symmetry(shard_files(shards, "train"), tuple(info.image_shape), len(info.class_names))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, symmetry)
    return DataStats(
        height,
        width,
        channels,
        tuple(info.splits["train"].class_counts),
        info.splits["val"].records,
        info.splits["test"].records,
        bool(info.text),
        symmetry["mirror"],
        symmetry["turn"],
    )


def _symmetry(files: list[str], shape: tuple[int, ...], classes: int) -> dict[str, float]:
    """The share of classes whose mean image looks the same mirrored (``mirror``) and turned a quarter
    (``turn``): a Pearson correlation over pixels of at least ``SYMMETRIC``, over the classes seen in
    the first ``STATS_RECORDS`` records."""
    import numpy as np

    from imgflow.training.inputs import shard_dataset

    sums = np.zeros((classes, *shape), "float64")
    counts = np.zeros(classes, "int64")
    seen = 0
    for images, labels in shard_dataset(files, shape, 256, training=False).as_numpy_iterator():
        np.add.at(sums, labels, images.astype("float64"))
        np.add.at(counts, labels, 1)
        seen += len(labels)
        if seen >= STATS_RECORDS:
            break
    means = [sums[c] / counts[c] for c in range(classes) if counts[c]]

    def alike(a: Any, b: Any) -> float:
        a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
        scale = float(np.sqrt((a * a).sum() * (b * b).sum()))
        return float((a * b).sum() / scale) if scale else 1.0

    mirror = float(np.mean([alike(m, m[:, ::-1]) >= SYMMETRIC for m in means])) if means else 0.0
    turn = float(np.mean([alike(m, np.rot90(m)) >= SYMMETRIC for m in means])) if means and shape[0] == shape[1] else 0.0
    return {"mirror": round(mirror, 4), "turn": round(turn, 4), "records": seen}


def budgeted(
    config: TrainConfig, fixed: tuple[str, ...], results: Mapping[str, StageResult], metric: str = "accuracy", *, run: bool = True
) -> TrainConfig | None:
    """``config`` with the recipe's choices for every field not in ``fixed`` when it has a budget (else
    ``config`` itself), and its candidates to race judged by ``metric``, from the results of the stages
    before training; None when the plan needs a measurement and ``run`` is false.

    Training gets the budget less the data stages' recorded build seconds, the speed probe's recorded
    seconds (both the same on every rerun, so the plan and the train key are too) and the reserve for
    validate and export."""
    if config.budget is None:
        return config
    budget = parse_duration(config.budget)
    stats = data_stats(results["shard"], run=run)
    speeds = measure(stats, run=run) if stats is not None else None
    if stats is None or speeds is None:
        return None
    data = sum(_build_seconds(result) for name, result in results.items() if name != "train" and result is not None)
    cores = cpus.budget().cores
    seconds = training_seconds(budget, data + speeds.seconds, cores)
    plan = choose(stats, seconds, speeds, {name: getattr(config, name) for name in fixed})
    head = (
        f"budget {config.budget} ({budget:.0f} s): the data stages took {data:.0f} s and the speed probe "
        f"{speeds.seconds:.0f} s, validate and export keep {reserve_seconds(budget, cores):.0f} s: training gets "
        f"{seconds:.0f} s and should take {plan.seconds:.0f} s"
    )
    race = tuple(candidate.as_dict() for candidate in plan.candidates)
    return config.replace(**plan.settings, plan=(head, *plan.reasons), deadline=round(seconds, 1), race=race, select_by=metric)


def _build_seconds(result: StageResult) -> float:
    """How long a stage's output took to build, from its manifest (0 when it cannot be read here)."""
    try:
        return float(json.loads((Path(result.path) / MANIFEST).read_text()).get("seconds", 0.0))
    except (OSError, ValueError):
        return 0.0
