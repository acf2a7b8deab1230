"""A network trained from scratch, sized to the time: what the recipe (``imgflow.training.recipe``)
knows of the data (``DataStats``) and of this machine (``Speeds``, measured by
``imgflow.training.probe``), a network's multiplies as Keras builds it, and ``scratch_plan``: the family
(the small CNN, or ``resnet9`` for enough data), input size, width and steps of the most multiplies that
still afford the passes the data needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

WIDTHS = (16, 24, 32, 48, 64)  # the CNN's base channels: multiples of 8, what CPU and GPU kernels tile best
RESNET_WIDTHS = (16, 24, 32)  # resnet9's (x8 at its last stage)
RESNET_RECORDS = 20_000  # the fewest training images the residual network is offered for
WIDE_RECORDS = 6_000  # training images per 32 channels of width offered (width 64 from 12,000 images)
SHRUNK_SIZES = (128, 96, 64)  # what a large image may shrink to inside the CNN
MIN_FEATURE_SIDE = 64  # a grayscale image smaller than this is a glyph, not a photograph
BATCH = 128
CNN_GRID = 3  # imgflow.training.models.GRID: the CNN's classifier sees a 3x3 grid of its last feature map
LIGHT_PASSES = 20  # fewer passes than this over the data get lighter augmentation
SHORT_SHARE = 2 / 3  # when no network affords the passes the data needs, the widest that affords this share of them
MAX_EPOCH_FACTOR = 3  # spend no more than this many times the minimum passes, even with time left
MAX_CHUNKS = 20  # at most this many Keras epochs (each validates and checkpoints): small data gets longer ones
EPOCH_SECONDS = 1.0  # what each Keras epoch's validation setup and checkpoint cost besides its images


@dataclass(frozen=True)
class DataStats:
    """What the recipe knows of the data: the stored image shape, the train split's records per class,
    the other splits' sizes, and the class-mean images' symmetry (``mirror``: the share of classes whose
    mean image correlates with its left-right mirror image at ``SYMMETRIC`` or more; ``turn``: with its
    quarter turn, 0 for non-square images)."""

    height: int
    width: int
    channels: int
    class_counts: tuple[int, ...]
    val_records: int
    test_records: int
    text: bool = False
    mirror: float = 0.0
    turn: float = 0.0

    @property
    def train_records(self) -> int:
        return sum(self.class_counts)

    @property
    def glyphs(self) -> bool:
        """Small grayscale images: digits, letters, clothes on a plain ground, not photographs."""
        return self.channels == 1 and min(self.height, self.width) < MIN_FEATURE_SIDE

    @property
    def imbalance(self) -> float:
        present = [count for count in self.class_counts if count]
        return max(present) / min(present) if present else 1.0


@dataclass(frozen=True)
class Speeds:
    """This machine's speed (``imgflow.training.probe``): a CNN training image costs ``overhead + per_mac *
    multiplies`` seconds at batch ``batch``; ``features`` maps a Lite0 input size to its seconds per
    image (empty when not measured: no Lite0 on this data, or its weights are missing)."""

    overhead: float
    per_mac: float
    batch: int = BATCH
    features: Mapping[int, float] = field(default_factory=dict)
    seconds: float = 0.0  # what measuring took (a budget pays it, cached or not, so its plan stays the same)
    resnet_overhead: float | None = None  # resnet9's fixed part (its per-multiply part is the CNN's); None: not measured

    def image(self, family: str, macs: float) -> float:
        """Seconds per training image of a ``family`` network of ``macs`` multiplies."""
        overhead = self.overhead if family == "cnn" else self.resnet_overhead
        assert overhead is not None, family
        return overhead + self.per_mac * macs


def cnn_macs(size: tuple[int, int], channels: int, width: int, classes: int) -> int:
    """Multiplies of one image through ``imgflow.training.models.make_model`` (convolutions and the classifier;
    batch norm and pooling are the per-image overhead the probe measures)."""
    height, wide = size
    total = height * wide * 9 * channels * width
    if min(size) >= 8:
        height, wide = height // 2, wide // 2
    total += height * wide * 9 * (width * 2 * width + 2 * width * 2 * width)
    if min(size) >= 16:
        height, wide = height // 2, wide // 2
    total += height * wide * 9 * 2 * width * 4 * width
    return total + CNN_GRID * CNN_GRID * 4 * width * classes


def resnet9_macs(size: tuple[int, int], channels: int, width: int, classes: int) -> int:
    """Multiplies of one image through ``imgflow.training.models.make_resnet9``."""
    height, wide = size
    total = height * wide * 9 * (channels * width + width * 2 * width)
    height, wide = height // 2, wide // 2
    total += height * wide * 9 * (2 * (2 * width) ** 2 + 2 * width * 4 * width)
    height, wide = height // 2, wide // 2
    total += height * wide * 9 * 4 * width * 8 * width
    if min(size) >= 8:
        height, wide = height // 2, wide // 2
    total += height * wide * 9 * 2 * (8 * width) ** 2
    return total + 8 * width * classes


def minimum_epochs(records: int) -> int:
    """The fewest passes over ``records`` training images worth planning for: about 12 for 60,000 and
    more for less data (a small dataset's model needs more passes to see as many images)."""
    return max(10, min(40, round(12 * (60_000 / max(records, 1)) ** 0.35)))


def scratch_plan(
    stats: DataStats, usable: float, speeds: Speeds, fixed: Mapping[str, Any], settings: dict[str, Any], reasons: list[str]
) -> float:
    """A network trained from scratch: its family, input size, width, batch and steps (into
    ``settings``); returns its expected seconds."""
    records = stats.train_records
    batch = fixed.get("batch_size", BATCH)
    side = min(stats.height, stats.width)
    if "input_size" in fixed:
        sizes: list[int | None] = [fixed["input_size"]]
    elif side > SHRUNK_SIZES[0]:
        sizes = list(SHRUNK_SIZES)  # training from scratch on the full size of large images costs more than it adds
    else:
        sizes = [None]
    families = (
        [fixed["model"]] if fixed.get("model") in ("cnn", "resnet9") else ["cnn", *(["resnet9"] if deep_enough(stats, speeds) else [])]
    )
    need = fixed.get("epochs") or minimum_epochs(records)
    per_epoch_extra = stats.val_records / 3  # validation every epoch: about a third of a training image's cost each
    classes = len(stats.class_counts)

    def shape(size: int | None) -> tuple[int, int]:
        return (size, size) if size else (stats.height, stats.width)

    candidates = [
        (family, size, width)
        for family in families
        for size in sizes
        for width in ([fixed["width"]] if "width" in fixed else _widths(family, records))
    ]
    macs = {c: (cnn_macs if c[0] == "cnn" else resnet9_macs)(shape(c[1]), stats.channels, c[2], classes) for c in candidates}
    cost = {c: (records + per_epoch_extra) * speeds.image(c[0], macs[c]) for c in candidates}
    affordable = [c for c in candidates if cost[c] * need <= usable]
    if affordable:
        # The deeper family first when it is affordable at all: at the same multiplies it learns more.
        family, size, width = max(affordable, key=lambda c: (c[0] == "resnet9", macs[c], c[2]))
        why = f"the most multiplies ({macs[(family, size, width)] / 1e6:.1f}M an image) that still affords {need} epochs"
    elif fewer := [c for c in candidates if cost[c] * round(need * SHORT_SHARE) <= usable]:
        # Nothing affords the passes the data needs: a wider network learns more from fewer passes than
        # the narrowest from more, which plateaus with train and validation accuracy alike (capacity,
        # not passes, is short: benchmarks/RESULTS.md, "A time budget").
        family, size, width = max(fewer, key=lambda c: (macs[c], c[2]))
        why = (
            f"the most multiplies ({macs[(family, size, width)] / 1e6:.1f}M an image) that affords "
            f"{round(need * SHORT_SHARE)} passes: nothing affords {need} here"
        )
    else:
        family, size, width = min(candidates, key=lambda c: cost[c])
        why = f"the cheapest candidate: even it affords fewer than {round(need * SHORT_SHARE)} epochs in the time"
    chosen = (family, size, width)
    settings["model"] = family
    if family == "resnet9":
        reasons.append(f'model = "resnet9": {records} training images are enough for a residual network\'s depth, and it fits the time')
    elif "resnet9" in families:
        reasons.append('model = "cnn": the residual network does not fit the time')
    elif "model" not in fixed:
        reasons.append(f'model = "cnn": the small CNN (the residual network is offered from {RESNET_RECORDS} training images)')
    if size:
        settings["input_size"] = size
        reasons.append(f"input_size = {size}: {stats.height}x{stats.width} images shrink inside the model to what the time allows")
    settings["width"] = width
    channels = f"{width}-{2 * width}-{4 * width}" if family == "cnn" else f"{width}-{2 * width}-{4 * width}-{8 * width}"
    reasons.append(f"width = {width} ({channels} channels): {why} ({cost[chosen]:.0f} s an epoch here)")
    steps_per_epoch = math.ceil(records / batch)
    if "epochs" in fixed:
        epochs = fixed["epochs"]
        reasons.append(f"epochs = {epochs}: fixed by the spec")
    else:
        passes = usable / (cost[chosen] + EPOCH_SECONDS)
        capped = passes > MAX_EPOCH_FACTOR * need
        passes = max(1.0, min(passes, MAX_EPOCH_FACTOR * need))
        reasons.append(
            f"{passes:.1f} passes over the data fill the time"
            + (f" (capped at {MAX_EPOCH_FACTOR}x the {need} a dataset of {records} images needs)" if capped else "")
        )
        # The steps of every pass that fits, and of the part of a pass that fits too, in at most
        # MAX_CHUNKS Keras epochs (each validates and checkpoints, which costs time on small data).
        total = max(1, int(passes * steps_per_epoch))
        epochs = max(1, min(MAX_CHUNKS, int(passes)))
        if "steps_per_epoch" not in fixed and total != epochs * steps_per_epoch:
            steps_per_epoch = math.ceil(total / epochs)
            settings["steps_per_epoch"] = steps_per_epoch
            reasons.append(
                f"epochs = {epochs} of {steps_per_epoch} steps each: a validation and a checkpoint every {steps_per_epoch} steps"
            )
        else:
            reasons.append(f"epochs = {epochs}")
    # Dropout regularizes; with few passes the model is far from memorizing and needs all it has.
    passes_planned = epochs * steps_per_epoch * batch / records
    dropout = 0.1 if family == "resnet9" or passes_planned < LIGHT_PASSES else 0.3
    settings.update(epochs=epochs, batch_size=batch, learning_rate=5e-3, schedule="linear", dropout=dropout)
    rate = fixed.get("learning_rate", settings["learning_rate"])
    reasons.append(f'schedule = "linear": the learning rate ({rate:g}) decays to zero at the last of the {epochs * steps_per_epoch} steps')
    return epochs * steps_per_epoch * batch / records * cost[chosen] + epochs * EPOCH_SECONDS


def _widths(family: str, records: int) -> tuple[int, ...]:
    """The widths offered: a network trained from scratch on few images gains nothing from more
    channels than ``records / WIDE_RECORDS`` buys, whatever the time (only overfitting, and unstable
    early epochs)."""
    offered = WIDTHS if family == "cnn" else RESNET_WIDTHS
    return tuple(width for width in offered if width <= max(offered[0], 32 * records // WIDE_RECORDS)) or offered[:1]


def deep_enough(stats: DataStats, speeds: Speeds) -> bool:
    """Whether the residual network is a candidate: enough data for its depth, and measured here."""
    return stats.train_records >= RESNET_RECORDS and speeds.resnet_overhead is not None
