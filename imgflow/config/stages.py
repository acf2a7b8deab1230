"""Each stage's settings: a frozen, strict pydantic model per stage (``imgflow.config.checks.StageConfig``)
whose fields carry their rules (``Annotated[int, _at_least(1)]``), and the names they are checked
against: the modules that act on a setting import its names from here."""

from __future__ import annotations

import re
from typing import Annotated, Any, Self

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from imgflow.config.checks import Rule, StageConfig, is_duration
from imgflow.store.fingerprint import INTERNAL, KEYLESS

BACKENDS = ("onnx", "onnx-int8", "tensorflow")  # how imgflow.serving.batch runs a registered model
# What imgflow.training.models builds, checked here without importing Keras (tests/unit/test_models.py keeps
# them equal to the builders').
MODEL_NAMES = ("cnn", "resnet9", "transfer")
BACKBONE_NAMES = ("EfficientNetLite0", "MobileNetV2", "MobileNetV3Small", "EfficientNetB0", "ResNet50V2", "VGG16")
LITE0 = "EfficientNetLite0"  # the backbone whose ImageNet weights imgflow has offline (imgflow.training.weights)
IMAGENET, RANDOM = "imagenet", "random"  # [train] backbone_weights besides a file
IMAGENET_SIZE, RANDOM_SIZE = 224, 96  # a transfer model's default backbone_size: ImageNet weights' own, or a small one
SCHEDULE_NAMES = ("cosine", "exponential", "linear", "one_cycle", "plateau")  # what imgflow.training.optim schedules
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")  # imgflow.training.accel
# The most pixels an image's header may declare (``[clean] max_pixels``): Pillow's own default
# (about 9,459 x 9,459; 256 MiB of 24-bit pixels). A file claiming more is quarantined as
# ``too_large`` from its header, before any pixel is decoded: a few bytes can claim gigabytes.
MAX_PIXELS = 89_478_485
FLIPS = ("none", "horizontal", "both")  # imgflow.training.inputs.make_augmenter
MIN_TEST_RECORDS = 10  # the default [gate] min_test_records
DRIFT_POLICIES = ("flag", "refuse")  # [gate] max_drift
AUDIT_EMBEDDINGS = ("auto", "champion", "lite0", "pixels")  # [audit] embeddings: imgflow.stages.audit
AUDIT_ACTIONS = ("report", "exclude")  # [audit] action: imgflow.pipeline.audited_shards
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")  # [gate] metric: imgflow.registry.gate.score
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a model's name is a folder's name


def _at_least(low: float) -> Rule:
    return Rule(lambda value: value >= low, f"at least {low}")


def _above(low: float) -> Rule:
    return Rule(lambda value: value > low, f"above {low}")


def _fraction(upper_open: bool = False) -> Rule:
    if upper_open:
        return Rule(lambda value: 0 <= value < 1, "at least 0 and below 1")
    return Rule(lambda value: 0 <= value <= 1, "between 0 and 1")


def _one_of(*choices: Any) -> Rule:
    words = ", ".join(str(choice).lower() if isinstance(choice, bool) else repr(choice) for choice in choices)
    return Rule(lambda value: value in choices, f"one of {words}")


class DownloadConfig(StageConfig):
    source: str
    limit: int | None = None  # keep a fixed sample of this many records (see stages.download.sample)
    options: dict[str, Any] = Field(default_factory=dict)
    # Seconds a fetch may keep retrying failures that may pass (imgflow.runtime.network); it cannot change
    # what is fetched, so it is no part of the cache key.
    timeout: Annotated[float, KEYLESS] = 60.0


class FetchConfig(StageConfig):
    """A spec's ``[download]`` section."""

    timeout: Annotated[float, _above(0)] = 60.0


class CleanConfig(StageConfig):
    # (height, width); None: the most common size
    image_size: Annotated[tuple[int, int] | None, Rule(lambda v: min(v) >= 1, "two sizes of at least 1")] = None
    # 1 or 3; None: 1 when every image is grayscale, else 3
    channels: Annotated[int | None, _one_of(1, 3)] = None
    # None: the sorted labels found
    class_names: Annotated[
        tuple[str, ...] | None, Rule(lambda v: len(v) >= 2 and len(set(v)) == len(v) and all(v), "two or more different, non-empty names")
    ] = None
    test_fraction: Annotated[float, _fraction(upper_open=True)] = 0.2
    val_fraction: Annotated[float, _fraction(upper_open=True)] = 0.1
    split_salt: str = ""
    # The most pixels an image's header may declare; more is quarantined as ``too_large`` before any
    # pixel is decoded (a few bytes of PNG can claim gigabytes). Pillow's default limit.
    max_pixels: Annotated[int, _at_least(1)] = MAX_PIXELS
    # A CSV of corrected labels (columns id and label, e.g. an audit's labels.csv once reviewed), applied
    # to the records it names before anything else; a relative path is the spec file's folder's.
    labels: Annotated[str | None, KEYLESS] = None
    # Its (id, label) pairs, read when the run's config is built: the file's content keys the stage, not its path.
    relabel: Annotated[tuple[tuple[str, str], ...], INTERNAL] = ()

    @model_validator(mode="after")
    def _leaves_a_train_split(self) -> Self:
        if self.test_fraction + self.val_fraction >= 1:
            raise PydanticCustomError(
                "rule",
                "test_fraction + val_fraction must be below 1 (the rest is the train split), got {test} + {val}",
                {"test": self.test_fraction, "val": self.val_fraction},
            )
        return self


class ShardConfig(StageConfig):
    # Shards hold consecutive records, one file per split each: about shard_bytes (TensorFlow's guidance:
    # ~100 MB) or records_per_shard. Below min_shards shards, as many as min_shards while each holds
    # 10 MB: readers and the parallel writers then have files to share (TensorFlow's guidance again).
    shard_bytes: Annotated[int, _at_least(1)] = 100 * 2**20
    records_per_shard: Annotated[int | None, _at_least(1)] = None
    min_shards: Annotated[int, _at_least(1)] = 8
    # Records left out of every split, each with why: the audit's findings under [audit] action = "exclude"
    # (set by the run, never by a spec: imgflow.pipeline.audited_shards).
    exclude: Annotated[tuple[tuple[str, str], ...], INTERNAL] = ()


class TrainConfig(StageConfig):
    model: Annotated[str, _one_of(*MODEL_NAMES)] = "cnn"
    width: Annotated[int, _at_least(1)] = 16
    epochs: Annotated[int, _at_least(1)] = 15
    batch_size: Annotated[int, _at_least(1)] = 64
    learning_rate: Annotated[float, _above(0)] = 3e-3
    dropout: Annotated[float, _fraction(upper_open=True)] = 0.3
    translate: Annotated[float, _fraction()] = 0.1
    rotate: Annotated[float, _fraction()] = 0.05
    zoom: Annotated[float, _fraction(upper_open=True)] = 0.1
    flip: Annotated[str, _one_of(*FLIPS)] = "none"  # random flips: none, left-right, or on both axes
    # The CNN's input side: images are resized to input_size x input_size inside the model (None: as stored).
    input_size: Annotated[int | None, _at_least(8)] = None
    # Steps a (Keras) epoch, the unit of checkpoints and validation (None: one pass over the train split).
    steps_per_epoch: Annotated[int | None, _at_least(1)] = None
    seed: int = 0
    class_weights: bool = False  # weigh classes by inverse frequency, for imbalanced data
    # Transfer learning (model = "transfer"): a backbone, its weights ("imagenet": EfficientNetLite0's,
    # imported offline (imgflow.training.weights); a local .weights.h5 file; or "random": nothing is
    # downloaded), at backbone_size, trained frozen for freeze_epochs, then fine-tuned at
    # learning_rate * fine_tune_factor. Left unset: the backbone's ImageNet weights at the size they were
    # trained at, frozen for a third of the epochs first (_transfer_defaults).
    backbone: Annotated[str, _one_of(*BACKBONE_NAMES)] = "EfficientNetLite0"
    backbone_weights: str | None = None
    backbone_size: Annotated[int | None, _at_least(32)] = None
    freeze_epochs: Annotated[int | None, _at_least(0)] = None
    fine_tune_factor: Annotated[float, _above(0)] = 0.1
    # Hardware (imgflow.training.accel): "auto" = mixed_bfloat16 and XLA on a GPU, no XLA on a CPU, and float32
    # there unless it has AMX bf16 tiles.
    precision: Annotated[str, _one_of(*PRECISIONS)] = "auto"
    jit_compile: Annotated[str | bool, _one_of("auto", True, False)] = "auto"
    # "device": in the train step; "host": in tf.data; auto: device on a GPU
    augment_on: Annotated[str, _one_of("auto", "host", "device")] = "auto"
    deterministic: bool = True  # same inputs, same model bits (TensorFlow op determinism)
    # The toolbox (imgflow.training.optim): the learning-rate schedule (cosine, exponential: times decay_rate
    # each epoch, one_cycle, plateau: times plateau_factor after plateau_patience epochs without a
    # better validation loss), AdamW's decoupled weight decay, an L2 penalty on every kernel, label
    # smoothing, and early stopping after early_stopping epochs without a better validation loss (0:
    # off), keeping the best epoch's weights.
    schedule: Annotated[str, _one_of(*SCHEDULE_NAMES)] = "cosine"
    decay_rate: Annotated[float, Rule(lambda v: 0 < v <= 1, "above 0 and at most 1")] = 0.9
    plateau_factor: Annotated[float, Rule(lambda v: 0 < v < 1, "above 0 and below 1")] = 0.5
    plateau_patience: Annotated[int, _at_least(1)] = 2
    weight_decay: Annotated[float, _at_least(0)] = 0.0
    l2: Annotated[float, _at_least(0)] = 0.0
    label_smoothing: Annotated[float, _fraction(upper_open=True)] = 0.0
    early_stopping: Annotated[int, _at_least(0)] = 0
    # Image + text (data whose source reads text): a text tower (a vocabulary of the train split's
    # text_vocabulary most frequent tokens, an embedding of text_dim, mean pooling over the first
    # text_length tokens) fused with the image model; modality_dropout of the training records lose
    # their text or their image, so the model answers from either alone.
    text: bool = False
    text_length: Annotated[int, _at_least(1)] = 32
    text_vocabulary: Annotated[int, _at_least(1)] = 20_000
    text_dim: Annotated[int, _at_least(1)] = 64
    modality_dropout: Annotated[float, _fraction(upper_open=True)] = 0.3
    # The run's time budget ("15m", "90s", "1h30m"): every field above that the spec and the command line
    # leave open is chosen by the recipe (imgflow.training.recipe) to fill it.
    budget: Annotated[str | None, Rule(is_duration, 'a duration such as "15m", "90s" or "1h30m"')] = None
    # What the recipe chose and why (imgflow.training.recipe.Plan.reasons), and the seconds it gave training: a
    # record of the plan, set by the recipe, never by a spec. The settings it chose key the output.
    plan: Annotated[tuple[str, ...], INTERNAL, KEYLESS] = ()
    deadline: Annotated[float | None, INTERNAL, KEYLESS] = None
    # The recipe's candidates when it races more than one (imgflow.training.race.Candidate.as_dict), and
    # the figure a budgeted run is judged by ([gate] metric): the race, and the epoch kept, follow it.
    race: Annotated[tuple[dict[str, Any], ...], INTERNAL] = ()
    select_by: Annotated[str, INTERNAL, _one_of(*METRICS)] = "accuracy"

    @model_validator(mode="before")
    @classmethod
    def _transfer_defaults(cls, data: Any) -> Any:
        """A transfer model's unset backbone settings: "transfer" means transferred weights. The ImageNet
        weights where imgflow has them (EfficientNetLite0's), at the input size they were trained at,
        frozen first (fastai's recipe: the new head learns before it can disturb the backbone); random
        weights only when asked for by name, at a small size, unfrozen."""
        if not isinstance(data, dict) or data.get("model") != "transfer":
            return data
        data = dict(data)
        backbone = data.get("backbone", cls.model_fields["backbone"].default)
        if data.get("backbone_weights") is None:
            if backbone != LITE0:
                raise PydanticCustomError(
                    "rule",
                    'model = "transfer" with backbone = "{backbone}" needs backbone_weights: imgflow has ImageNet weights '
                    'offline for EfficientNetLite0 only; name a .weights.h5 file of {backbone}, or "random" for random weights',
                    {"backbone": backbone},
                )
            data["backbone_weights"] = IMAGENET
        pretrained = data["backbone_weights"] != RANDOM
        if data.get("backbone_size") is None:
            data["backbone_size"] = IMAGENET_SIZE if pretrained else RANDOM_SIZE
        if data.get("freeze_epochs") is None:
            epochs = data.get("epochs", cls.model_fields["epochs"].default)
            data["freeze_epochs"] = max(1, epochs // 3) if pretrained else 0
        return data

    @property
    def pretrained(self) -> bool:
        """Whether a transfer model's backbone starts from trained weights (its batch norm then stays frozen)."""
        return self.backbone_weights not in (None, RANDOM)


class GateConfig(StageConfig):
    # What the gate judges (imgflow.registry.gate.score): "accuracy", "balanced_accuracy" (the mean of the classes'
    # recalls) or "macro_f1"; a budgeted run's race and kept epoch follow it too. The floor and the
    # tolerance are in its terms.
    metric: Annotated[str, _one_of(*METRICS)] = "accuracy"
    min_accuracy: Annotated[float, _fraction()] = 0.98
    tolerance: Annotated[float, _fraction()] = 0.005  # how much worse than the champion a candidate may be
    # The paired comparison with the champion (imgflow.registry.gate): the significance level of McNemar's test,
    # and how much one class's recall may fall before a significant fall refuses the candidate.
    alpha: Annotated[float, Rule(lambda v: 0 < v < 1, "above 0 and below 1")] = 0.05
    max_class_drop: Annotated[float, _fraction()] = 0.05
    # The fewest test records a candidate is judged on: fewer is refused right after cleaning
    # (imgflow.data.cleantable.check_splits). It changes no output, so it is no part of the cache key.
    min_test_records: Annotated[int, _at_least(1), KEYLESS] = MIN_TEST_RECORDS
    # What new data that drifted from the champion's (imgflow.stages.drift) does: "flag" it (reasons,
    # summary, report, Prefect event; promotion goes on), or "refuse" promotion.
    max_drift: Annotated[str, _one_of(*DRIFT_POLICIES)] = "flag"
    # A Hive partition key in the records' ids ("date": each date partition a slice): the test accuracy of
    # each slice is reported, and a slice's fall is judged as a class's (max_class_drop, alpha).
    slice_by: Annotated[str | None, Rule(lambda v: re.fullmatch(r"\w+", v) is not None, 'a partition key such as "date"')] = None


class DriftConfig(StageConfig):
    # New data against the champion's (imgflow.serving.drift_checks): a check drifts beyond noise (p < alpha / checks)
    # and its threshold: a histogram's Jensen-Shannon distance, the champion's embeddings' squared MMD,
    # and the fall of the champion's accuracy on new held-out records.
    alpha: Annotated[float, Rule(lambda v: 0 < v < 1, "above 0 and below 1")] = 0.01
    max_distance: Annotated[float, _fraction()] = 0.15
    max_mmd: Annotated[float, _above(0)] = 0.05
    max_accuracy_drop: Annotated[float, _fraction()] = 0.05
    # The held-out records (val and test splits) the champion embeds and predicts, at most.
    sample: Annotated[int, _at_least(20)] = 500


class AuditConfig(StageConfig):
    # What is wrong with the data's content (imgflow.data.audit): suspected label errors, near-duplicates
    # (those across splits are leakage) and outliers, reported; nothing is changed.
    enabled: bool = True
    # What a record means, for its label vote and its outlier score: "auto" is the champion's penultimate
    # layer when there is a champion that takes these images and did not learn from this data, else
    # EfficientNet-Lite0's ImageNet features for images of 48 pixels a side or more, else the pixels.
    embeddings: Annotated[str, _one_of(*AUDIT_EMBEDDINGS)] = "auto"
    # Two records whose looks (pixels at most 32x32, reduced) are within this cosine distance are near-duplicates.
    near_duplicate: Annotated[float, Rule(lambda v: 0 <= v < 1, "from 0 to below 1")] = 0.006
    # The findings of each kind that the report shows as pictures, at most.
    examples: Annotated[int, _at_least(0)] = 40
    # What the run does with the findings: "report" changes nothing; "exclude" leaves the suspected label
    # errors, and the held-out record of each pair across splits, out of training and test (the shard
    # stage records each with why). The audit's own output is the same either way.
    action: Annotated[str, _one_of(*AUDIT_ACTIONS), KEYLESS] = "report"


class ExportConfig(StageConfig):
    opset: Annotated[int, Rule(lambda v: 13 <= v <= 18, "an ONNX opset from 13 to 18")] = 17
    parity_tolerance: Annotated[float, _above(0)] = 1e-5
    parity_batch: Annotated[int, _at_least(1)] = 256
    int8: bool = True  # also try an int8-quantized ONNX model
    int8_max_drop: Annotated[float, _fraction()] = 0.005  # keep it only if it loses at most this much test accuracy
    calibration_images: Annotated[int, _at_least(1)] = 256


SECTIONS: dict[str, type[StageConfig]] = {
    "download": FetchConfig,
    "clean": CleanConfig,
    "shard": ShardConfig,
    "train": TrainConfig,
    "gate": GateConfig,
    "drift": DriftConfig,
    "audit": AuditConfig,
    "export": ExportConfig,
}
