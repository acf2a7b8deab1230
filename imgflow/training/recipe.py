"""The recipe: what a run with a time budget trains, chosen from the data, the time and this machine.

``choose`` is a pure function of three things:

- the train data's statistics (``DataStats``): image size and channels, records per class, and how
  the class-mean images behave under a mirror and a quarter turn (``imgflow.training.probe.image_stats``);
- the seconds training may take (``imgflow.training.budget.training_seconds``: the budget, less the data stages' recorded
  time and a reserve for validate and export);
- this machine's speed (``Speeds``): seconds per training image of the small CNN as a line in its
  multiplies (two models measured, ``imgflow.training.probe.measure``), and seconds per image of
  EfficientNet-Lite0's frozen features at each input size.

It returns a ``Plan``: the ``[train]`` settings of its first candidate, each with a line saying why,
the seconds it expects training to take, and, where more than one candidate fits the time, the
candidates that ``imgflow.training.race`` races on the validation split. Settings the spec or the
command line fixed are never changed; the recipe plans around them. The candidates, the recipe's
preferred first (``race.entered`` keeps the first ones the time affords):

- **a network trained from scratch** (``imgflow.training.sizing.scratch_plan``): the small CNN, or the
  residual network for ``RESNET_RECORDS`` training images or more, at the input size and width of the
  most multiplies that still afford the passes the data needs, and where both families fit, the other
  one too; steps that fill its time with a learning rate decaying linearly to zero (Li et al. 2020,
  "Budgeted Training");
- **EfficientNet-Lite0's frozen ImageNet features** under a new head (features computed once), at the
  largest input size whose features fit in ``FEATURE_SHARE`` of the time (for glyphs: the smallest;
  on Fashion-MNIST such features lose to a small CNN, on drawings they win: the race measures it);
- **Lite0 fine-tuned** (fastai's recipe: the head on the frozen features first, then the whole network at a
  tenth of the rate, its batch norm frozen) at the largest size that affords ``FINE_TUNE_PASSES`` passes
  in half the time, for photographs and drawings;
- **what the data cannot decide**: class weights on imbalanced data (they trade the plain accuracy the
  gate measures for balanced accuracy: a candidate, never a rule), and no flips where the class means
  say inspection-like images (flips and quarter turns otherwise: ``_augmentation`` follows the class
  means' symmetry, and is lighter when the time buys fewer than ``LIGHT_PASSES`` passes).

Photographs and drawings list the features first, glyphs the network from scratch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imgflow.training.race import RUNG_SHARE, Candidate, entered, rungs_before_last
from imgflow.training.sizing import BATCH, EPOCH_SECONDS, LIGHT_PASSES, DataStats, Speeds, deep_enough, scratch_plan

FEATURE_SIZES = (224, 192, 160, 128)  # Lite0's input sizes, 224 first: what its ImageNet weights were trained at
FEATURE_SHARE = 0.6  # the most of the training time Lite0's features may take
IMBALANCE = 3.0
SYMMETRIC = 0.9  # a class mean this correlated with its mirror (or turned) image looks the same mirrored
SYMMETRIC_SHARE = 0.5  # flips when at least this share of the classes look the same flipped
SAFETY = 0.95  # plan for this share of the time: the probe's estimate is not exact
HEAD_EPOCHS = 20  # a head on cached features trains in seconds an epoch
HEAD_IMAGE_SECONDS = 2e-5  # a head's training on one cached feature vector (a dense layer: next to nothing)
FINE_TUNE_COST = 3.0  # a fine-tuning image costs this many forward passes (forward, backward, the update)
FINE_TUNE_PASSES = 3  # the fewest fine-tuning passes that make fine-tuning a candidate
FINE_TUNE_HEAD_EPOCHS = 5  # the head's epochs on the frozen features before fine-tuning


@dataclass(frozen=True)
class Plan:
    """The chosen ``[train]`` settings, why each was chosen, and the training seconds they should take."""

    settings: dict[str, Any]
    reasons: tuple[str, ...]
    seconds: float
    available: float
    candidates: tuple[Candidate, ...] = ()  # more than one: the race (imgflow.training.race) chooses among them

    def describe(self) -> list[str]:
        return [f"recipe: {line}" for line in self.reasons]


def _feature_records(stats: DataStats) -> int:
    """Images Lite0 runs over in a run: train and validation once (features cached), test twice
    (validate, the champion's check), and export's parity and int8 calibration batches."""
    return stats.train_records + stats.val_records + 2 * stats.test_records + 512


def choose(stats: DataStats, seconds: float, speeds: Speeds, fixed: Mapping[str, Any]) -> Plan:
    """The settings to train ``stats``'s data in ``seconds`` on a machine of ``speeds``; ``fixed`` holds
    the ``[train]`` settings the spec or the command line set, which win. With more than one candidate
    that fits (``Plan.candidates``), the run races them (``imgflow.training.race``) and ``settings`` are
    the first's."""
    usable = seconds * SAFETY
    reasons: list[str] = [f"{seconds:.0f} s to train in; planning for {usable:.0f} s of them"]
    frozen = _features_plan(stats, usable, speeds, fixed, reasons)
    tuned = _fine_tune_plan(stats, usable, speeds, fixed, frozen)
    both = _both_families(stats, speeds, fixed)
    kinds = 1 + both + (frozen is not None) + (tuned is not None) + _variants(stats, fixed)
    # Sized for what the race leaves the winner: its rungs and the last one's share.
    share = usable * (1 - RUNG_SHARE * rungs_before_last(kinds) / 2)
    own, scratch_reasons, expected = _scratch_candidate(stats, share, speeds, fixed, "a network trained from scratch, sized to the time")
    variants = _variant_candidates(stats, own, fixed)
    if both and own.settings["model"] == "resnet9":  # the CNN races it, at the width it affords
        why = "the small CNN, sized to the time: which family learns this data better, measured"
        variants.insert(0, _scratch_candidate(stats, share, speeds, {**fixed, "model": "cnn"}, why)[0])
    features = []
    if tuned is not None:
        features.append(tuned)
    if frozen is not None:
        features.append(frozen)
    ordered = [own, *features, *variants] if stats.glyphs or not features else [*features, own, *variants]
    if fixed.get("model") == "transfer" and features:  # the spec asked for a backbone: no network from scratch
        ordered = features
    # A spec that fixes how long to train (epochs, steps) leaves the race no rungs to plan.
    candidates = entered(ordered, usable) if not {"epochs", "steps_per_epoch"} & set(fixed) else ordered[:1]
    first = candidates[0]
    if len(candidates) > 1:
        reasons.append(
            f"a race of {len(candidates)} candidates (successive halving on the validation split): "
            + "; ".join(f"{c.name}: {c.why}" for c in candidates)
        )
        left_out = [c.name for c in ordered if c not in candidates]
        if left_out:
            reasons.append(f"not raced, for lack of time: {', '.join(left_out)}")
    if first is own:
        reasons += scratch_reasons
    else:
        reasons += first.why.split("; ")
    settings = dict(first.settings)
    if "class_weights" not in fixed:
        reasons.append(
            f"class_weights = false: the largest class holds {stats.imbalance:.1f}x the smallest; weighting classes trades plain "
            "accuracy for balanced accuracy"
            + (", so the race measures it as a candidate" if any("class_weights" in c.name for c in candidates) else "")
        )
    settings = {name: value for name, value in settings.items() if name not in fixed}
    raced = (
        tuple(
            Candidate(c.name, {k: v for k, v in c.settings.items() if k not in fixed}, c.pass_seconds, c.fixed_seconds, c.max_passes, c.why)
            for c in candidates
        )
        if len(candidates) > 1
        else ()
    )
    planned = (
        usable
        if raced
        else (first.fixed_seconds + expected if first is own else _feature_records(stats) * speeds.features[settings["backbone_size"]])
    )
    return Plan(settings, tuple(reasons), round(planned, 1), round(seconds, 1), raced)


def _name(settings: Mapping[str, Any], fixed: Mapping[str, Any]) -> str:
    family = settings.get("model", fixed.get("model", "cnn"))
    width = settings.get("width", fixed.get("width"))
    size = settings.get("input_size", fixed.get("input_size"))
    return f"{family}-w{width}" + (f"-{size}px" if size else "")


def _scratch_candidate(
    stats: DataStats, share: float, speeds: Speeds, fixed: Mapping[str, Any], why: str
) -> tuple[Candidate, list[str], float]:
    """A network from scratch sized to ``share`` seconds (``scratch_plan``), with the augmentation its
    data keeps and no class weights, its seconds a pass estimated; the lines that say why, and the
    seconds it should take."""
    settings: dict[str, Any] = {}
    reasons: list[str] = []
    expected = scratch_plan(stats, share, speeds, fixed, settings, reasons)
    _augmentation(stats, settings, fixed, reasons)
    if "class_weights" not in fixed:
        settings["class_weights"] = False
    records, batch = stats.train_records, settings["batch_size"]
    passes = settings["epochs"] * (settings.get("steps_per_epoch") or math.ceil(records / batch)) * batch / records
    return Candidate(_name(settings, fixed), settings, expected / max(passes, 1e-6), why=why), reasons, expected


def _both_families(stats: DataStats, speeds: Speeds, fixed: Mapping[str, Any]) -> bool:
    """Whether the residual network is a candidate at all (enough data, measured here) and the spec left
    the model open: then the small CNN races it, each at the size it affords."""
    return "model" not in fixed and deep_enough(stats, speeds)


def _variants(stats: DataStats, fixed: Mapping[str, Any]) -> int:
    """How many variants of the from-scratch network the race measures (``_variant_candidates``)."""
    return int(stats.imbalance > IMBALANCE and "class_weights" not in fixed) + int(_symmetric_both(stats) and "flip" not in fixed)


def _symmetric_both(stats: DataStats) -> bool:
    return stats.mirror >= SYMMETRIC_SHARE and stats.turn >= SYMMETRIC_SHARE


def _variant_candidates(stats: DataStats, own: Candidate, fixed: Mapping[str, Any]) -> list[Candidate]:
    """What the data cannot decide, measured: class weights on imbalanced data (they trade plain
    accuracy for balanced accuracy), and no flips where the class means say inspection-like images
    (flips and quarter turns keep their labels only if the objects have no orientation)."""
    out = []
    if stats.imbalance > IMBALANCE and "class_weights" not in fixed:
        out.append(
            Candidate(
                f"{own.name}+class_weights",
                {**own.settings, "class_weights": True},
                own.pass_seconds,
                why=f"the same, its classes weighed: the largest holds {stats.imbalance:.1f}x the smallest",
            )
        )
    if _symmetric_both(stats) and "flip" not in fixed:
        out.append(
            Candidate(
                f"{own.name}-no-flips",
                {**own.settings, "flip": "none"},
                own.pass_seconds,
                why="the same without flips: whether the objects have an orientation, measured",
            )
        )
    return out


def _features_plan(stats: DataStats, usable: float, speeds: Speeds, fixed: Mapping[str, Any], reasons: list[str]) -> Candidate | None:
    """Lite0's frozen ImageNet features under a new head, at the largest input size whose features fit
    in ``FEATURE_SHARE`` of the time (glyphs: the smallest, they hold no more detail); None when they do
    not fit, or the spec fixed another model."""
    if fixed.get("model", "transfer") != "transfer" or fixed.get("backbone", "EfficientNetLite0") != "EfficientNetLite0":
        return None
    if not speeds.features:
        reasons.append(
            "no ImageNet features: EfficientNet-Lite0's ImageNet weights are not installed here (imgflow weights import efficientnet-lite0)"
        )
        return None
    images = _feature_records(stats)
    sizes = [fixed["backbone_size"]] if "backbone_size" in fixed else [s for s in FEATURE_SIZES if s in speeds.features]
    for size in sizes[-1:] if stats.glyphs else sizes:
        cost = images * speeds.features[size]
        if cost <= FEATURE_SHARE * usable:
            epochs = fixed.get("epochs", HEAD_EPOCHS)
            settings = {
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
                "flip": "none",
                "translate": 0.0,
                "rotate": 0.0,
                "zoom": 0.0,
                "class_weights": False,
            }
            why = (
                f'model = "transfer" (EfficientNet-Lite0, ImageNet weights, frozen): its features of {images} images at '
                f"{size}x{size} take about {cost:.0f} s, within {FEATURE_SHARE:.0%} of the time; "
                "no augmentation: the frozen backbone's features are computed once, unaugmented"
            )
            return Candidate(
                f"lite0-frozen-{size}px", settings, stats.train_records * HEAD_IMAGE_SECONDS + EPOCH_SECONDS, cost, HEAD_EPOCHS, why
            )
    smallest = sizes[-1]
    reasons.append(
        f"no ImageNet features: EfficientNet-Lite0's features of {images} images would take about "
        f"{images * speeds.features[smallest]:.0f} s even at {smallest}x{smallest}, over {FEATURE_SHARE:.0%} of the time"
    )
    return None


def _fine_tune_plan(
    stats: DataStats, usable: float, speeds: Speeds, fixed: Mapping[str, Any], frozen: Candidate | None
) -> Candidate | None:
    """Lite0 fine-tuned after its head trained on the frozen features (fastai's recipe): at the largest
    input size where the whole network affords ``FINE_TUNE_PASSES`` passes in half the time, the
    backbone's batch norm kept frozen; None for glyphs, or where it affords them at no size."""
    if frozen is None or stats.glyphs:
        return None
    sizes = [fixed["backbone_size"]] if "backbone_size" in fixed else [s for s in FEATURE_SIZES if s in speeds.features]
    for size in sizes:
        per_pass = stats.train_records * FINE_TUNE_COST * speeds.features[size] + stats.val_records * speeds.features[size]
        features = _feature_records(stats) * speeds.features[size]
        if features + FINE_TUNE_PASSES * per_pass <= usable / 2:
            settings = {
                **frozen.settings,
                "backbone_size": size,
                "freeze_epochs": FINE_TUNE_HEAD_EPOCHS,
                "epochs": FINE_TUNE_HEAD_EPOCHS + FINE_TUNE_PASSES,
                "fine_tune_factor": 0.1,
            }
            why = (
                f"Lite0 fine-tuned at {size}x{size}: the head first ({FINE_TUNE_HEAD_EPOCHS} epochs on the frozen features), then "
                f"the whole network at a tenth of the rate; a pass costs about {per_pass:.0f} s here"
            )
            return Candidate(f"lite0-tuned-{size}px", settings, per_pass, features, why=why)
    return None


def _augmentation(stats: DataStats, settings: dict[str, Any], fixed: Mapping[str, Any], reasons: list[str]) -> None:
    """Augmentation that keeps the labels of this data, as far as its class means tell (the race
    measures flips where they say inspection images: ``_variant_candidates``)."""
    batch = settings.get("batch_size", fixed.get("batch_size", BATCH))
    steps = settings.get("steps_per_epoch") or math.ceil(stats.train_records / batch)
    passes = settings.get("epochs", fixed.get("epochs", 1)) * steps * batch / max(stats.train_records, 1)
    # Augmentation regularizes; a model that sees each image only a few times is far from memorizing
    # them and learns faster from the images as they are.
    light = passes < LIGHT_PASSES
    strength = "light shifts and zooms" if light else "small shifts and zooms"
    shift, zoom = (0.05, 0.05) if light else (0.08, 0.08)
    why = f" ({strength}: {passes:.0f} passes over the data)"
    if _symmetric_both(stats):
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
