"""The recipe: what a run with a time budget trains, chosen from the data, the time and this machine.

``choose`` is a pure function of three things:

- the train data's statistics (``DataStats``): image size and channels, records per class, and how
  the class-mean images behave under a mirror and a quarter turn (``imgflow.training.probe.image_stats``);
- the seconds training may take (``imgflow.training.budget.training_seconds``: the budget, less the data stages' recorded
  time and a reserve for validate and export);
- this machine's speed (``Speeds``): seconds per training image of the small CNN as a line in its
  multiplies (two models measured, ``imgflow.training.probe.measure``), and seconds per image of
  EfficientNet-Lite0's frozen features at each input size.

It returns a ``Plan``: the ``[train]`` settings it chose, each with a line saying why, and the seconds
it expects them to take. Settings the spec or the command line fixed are never changed; the recipe
plans around them. The choices:

- **model**: ImageNet features (a frozen EfficientNet-Lite0 under a new head, features computed once)
  for photographs and drawings (colour, or at least 64 pixels a side) when their cost fits in
  ``FEATURE_SHARE`` of the training time; otherwise the small CNN (``imgflow.training.models.make_model``).
- **network size**: the residual network (``resnet9``) when there are ``RESNET_RECORDS`` training
  images or more and it affords the passes below, else the small CNN; the input size (large images
  shrink to 128, 96 or 64 inside the model) and the width (multiples of 8) of the most multiplies that
  still affords ``minimum_epochs`` passes over the data: small data needs more passes than large.
- **steps**: as many as fill the time, at most ``MAX_EPOCH_FACTOR`` times the minimum, with a
  learning rate that decays linearly to zero at the last step (Li et al. 2020, "Budgeted Training":
  linear decay to zero is robust whatever the budget).
- **augmentation**: horizontal flips when the class means are mirror-symmetric (natural images),
  flips on both axes when they are symmetric under a quarter turn too (inspection-like images), small
  shifts, turns and zooms otherwise (glyphs, digits: a mirrored 3 is no 3); lighter when the time buys
  fewer than ``LIGHT_PASSES`` passes over the data.
- **imbalance**: class weights when the largest class holds over ``IMBALANCE`` times the smallest.
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
FEATURE_SIZES = (224, 192, 160, 128)  # Lite0's input sizes, 224 first: what its ImageNet weights were trained at
FEATURE_SHARE = 0.6  # the most of the training time Lite0's features may take
MIN_FEATURE_SIDE = 64  # a grayscale image smaller than this is a glyph, not a photograph
BATCH = 128
CNN_GRID = 3  # imgflow.training.models.GRID: the CNN's classifier sees a 3x3 grid of its last feature map
IMBALANCE = 3.0
SYMMETRIC = 0.9  # a class mean this correlated with its mirror (or turned) image looks the same mirrored
SYMMETRIC_SHARE = 0.5  # flips when at least this share of the classes look the same flipped
LIGHT_PASSES = 20  # fewer passes than this over the data get lighter augmentation
SHORT_SHARE = 2 / 3  # when no network affords the passes the data needs, the widest that affords this share of them
MAX_EPOCH_FACTOR = 3  # spend no more than this many times the minimum passes, even with time left
SAFETY = 0.95  # plan for this share of the time: the probe's estimate is not exact
HEAD_EPOCHS = 20  # a head on cached features trains in seconds an epoch
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


@dataclass(frozen=True)
class Plan:
    """The chosen ``[train]`` settings, why each was chosen, and the training seconds they should take."""

    settings: dict[str, Any]
    reasons: tuple[str, ...]
    seconds: float
    available: float

    def describe(self) -> list[str]:
        return [f"recipe: {line}" for line in self.reasons]


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


def _feature_records(stats: DataStats) -> int:
    """Images Lite0 runs over in a run: train and validation once (features cached), test twice
    (validate, the champion's check), and export's parity and int8 calibration batches."""
    return stats.train_records + stats.val_records + 2 * stats.test_records + 512


def choose(stats: DataStats, seconds: float, speeds: Speeds, fixed: Mapping[str, Any]) -> Plan:
    """The settings to train ``stats``'s data in ``seconds`` on a machine of ``speeds``; ``fixed`` holds
    the ``[train]`` settings the spec or the command line set, which win."""
    usable = seconds * SAFETY
    reasons: list[str] = [f"{seconds:.0f} s to train in; planning for {usable:.0f} s of them"]
    settings: dict[str, Any] = {}
    features = _features_plan(stats, usable, speeds, fixed, reasons)
    if features is not None:
        settings.update(features)
        expected = _feature_records(stats) * speeds.features[settings["backbone_size"]]
    else:
        expected = _cnn_plan(stats, usable, speeds, fixed, settings, reasons)
    _augmentation(stats, settings, fixed, reasons, frozen=features is not None)
    if "class_weights" not in fixed:
        settings["class_weights"] = stats.imbalance > IMBALANCE
        reasons.append(
            f"class_weights = {str(settings['class_weights']).lower()}: the largest class holds {stats.imbalance:.1f}x the smallest"
            + (f" (over {IMBALANCE:g}x)" if settings["class_weights"] else "")
        )
    settings = {name: value for name, value in settings.items() if name not in fixed}
    return Plan(settings, tuple(reasons), round(expected, 1), round(seconds, 1))


def _features_plan(stats: DataStats, usable: float, speeds: Speeds, fixed: Mapping[str, Any], reasons: list[str]) -> dict[str, Any] | None:
    """Lite0's frozen ImageNet features under a new head, at the largest input size whose features fit
    in ``FEATURE_SHARE`` of the time; None when the CNN is the better buy (or the spec fixed another model)."""
    if fixed.get("model", "transfer") != "transfer" or fixed.get("backbone", "EfficientNetLite0") != "EfficientNetLite0":
        return None
    if stats.channels == 1 and min(stats.height, stats.width) < MIN_FEATURE_SIDE:
        reasons.append(f"no ImageNet features: small grayscale images ({stats.height}x{stats.width}) are glyphs, not photographs")
        return None
    if not speeds.features:
        reasons.append(
            "no ImageNet features: EfficientNet-Lite0's ImageNet weights are not installed here (imgflow weights import efficientnet-lite0)"
        )
        return None
    images = _feature_records(stats)
    sizes = [fixed["backbone_size"]] if "backbone_size" in fixed else [s for s in FEATURE_SIZES if s in speeds.features]
    for size in sizes:
        cost = images * speeds.features[size]
        if cost <= FEATURE_SHARE * usable:
            reasons.append(
                f'model = "transfer" (EfficientNet-Lite0, ImageNet weights, frozen): its features of {images} images at '
                f"{size}x{size} take about {cost:.0f} s, within {FEATURE_SHARE:.0%} of the time; ImageNet features beat "
                "a network trained from scratch on a few thousand photographs or drawings"
            )
            epochs = fixed.get("epochs", HEAD_EPOCHS)
            reasons.append(
                f"epochs = {epochs}, all frozen: the head trains on cached features in seconds an epoch; "
                "fine-tuning would run the whole backbone every step"
            )
            return {
                "model": "transfer",
                "backbone": "EfficientNetLite0",
                "backbone_weights": "imagenet",
                "backbone_size": size,
                "epochs": epochs,
                "freeze_epochs": epochs,
                "dropout": 0.2,
                "learning_rate": 3e-3,
                "schedule": "linear",
                "batch_size": BATCH,
            }
    smallest = sizes[-1]
    reasons.append(
        f"no ImageNet features: EfficientNet-Lite0's features of {images} images would take about "
        f"{images * speeds.features[smallest]:.0f} s even at {smallest}x{smallest}, over {FEATURE_SHARE:.0%} of the time"
    )
    return None


def _cnn_plan(
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
        [fixed["model"]] if fixed.get("model") in ("cnn", "resnet9") else ["cnn", *(["resnet9"] if _deep_enough(stats, speeds) else [])]
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


def _deep_enough(stats: DataStats, speeds: Speeds) -> bool:
    """Whether the residual network is a candidate: enough data for its depth, and measured here."""
    return stats.train_records >= RESNET_RECORDS and speeds.resnet_overhead is not None


def _augmentation(stats: DataStats, settings: dict[str, Any], fixed: Mapping[str, Any], reasons: list[str], frozen: bool) -> None:
    """Augmentation that keeps the labels of this data (none on cached features: they are computed once)."""
    if frozen:
        settings.update(flip="none", translate=0.0, rotate=0.0, zoom=0.0)
        reasons.append("no augmentation: the frozen backbone's features are computed once, unaugmented")
        return
    batch = settings.get("batch_size", fixed.get("batch_size", BATCH))
    steps = settings.get("steps_per_epoch") or math.ceil(stats.train_records / batch)
    passes = settings.get("epochs", fixed.get("epochs", 1)) * steps * batch / max(stats.train_records, 1)
    # Augmentation regularizes; a model that sees each image only a few times is far from memorizing
    # them and learns faster from the images as they are.
    light = passes < LIGHT_PASSES
    strength = "light shifts and zooms" if light else "small shifts and zooms"
    shift, zoom = (0.05, 0.05) if light else (0.08, 0.08)
    why = f" ({strength}: {passes:.0f} passes over the data)"
    if stats.mirror >= SYMMETRIC_SHARE and stats.turn >= SYMMETRIC_SHARE:
        settings.update(flip="both", translate=shift, rotate=0.0, zoom=zoom)
        reasons.append(
            f'flip = "both": {stats.mirror:.0%} of the class means look the same mirrored and {stats.turn:.0%} turned, '
            f"as in inspection images{why}"
        )
    elif stats.mirror >= SYMMETRIC_SHARE:
        settings.update(flip="horizontal", translate=shift, rotate=0.0, zoom=zoom)
        reasons.append(f'flip = "horizontal": {stats.mirror:.0%} of the class means look the same mirrored, as natural images do{why}')
    else:
        settings.update(flip="none", translate=0.05 if light else 0.1, rotate=0.0 if light else 0.05, zoom=0.05 if light else 0.1)
        reasons.append(
            f'flip = "none": only {stats.mirror:.0%} of the class means look the same mirrored, as with glyphs and digits; '
            f"{'light shifts and zooms' if light else 'small shifts, turns and zooms'} only ({passes:.0f} passes over the data)"
        )
