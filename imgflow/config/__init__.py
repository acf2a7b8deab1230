"""Small typed configs, one per stage, and the named dataset specs in ``datasets/*.toml``.

Each stage config is a frozen, strict pydantic model (``imgflow.config.checks.StageConfig``) whose
fields carry their rules (``Annotated[int, _at_least(1)]``); a spec's section is read with
``parse_section``, which says what is wrong in one line naming the setting. Each stage's cache key
hashes only its own config, so changing a field reruns exactly that stage and the ones downstream of it.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Self, TypeVar

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from imgflow.config.checks import Rule, StageConfig, check_value, described, parse_section
from imgflow.data.images import MAX_PIXELS
from imgflow.runtime.errors import ConfigError
from imgflow.store.fingerprint import INTERNAL, KEYLESS
from imgflow.store.objectstore import is_remote
from imgflow.training.accel import PRECISIONS
from imgflow.training.budget import is_duration

Config = TypeVar("Config")
REPO_DATASETS = Path(__file__).resolve().parents[2] / "datasets"
BACKENDS = ("onnx", "onnx-int8", "tensorflow")  # how imgflow.serving.predict runs a registered model
# What imgflow.training.models builds, checked here without importing Keras (tests/unit/test_models.py keeps
# them equal to the builders').
MODEL_NAMES = ("cnn", "resnet9", "transfer")
BACKBONE_NAMES = ("EfficientNetLite0", "MobileNetV2", "MobileNetV3Small", "EfficientNetB0", "ResNet50V2", "VGG16")
SCHEDULE_NAMES = ("cosine", "exponential", "linear", "one_cycle", "plateau")  # imgflow.training.optim.SCHEDULES
FLIPS = ("none", "horizontal", "both")  # imgflow.training.inputs.make_augmenter
MIN_TEST_RECORDS = 10  # the default [gate] min_test_records
DRIFT_POLICIES = ("flag", "refuse")  # [gate] max_drift
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
    # Transfer learning (model = "transfer"): a backbone, its weights from a local file, "imagenet"
    # (EfficientNetLite0's, imported offline: imgflow.training.weights), or None (random; nothing is
    # downloaded), trained frozen for freeze_epochs, then fine-tuned at learning_rate * fine_tune_factor.
    backbone: Annotated[str, _one_of(*BACKBONE_NAMES)] = "MobileNetV2"
    backbone_weights: str | None = None
    backbone_size: Annotated[int, _at_least(32)] = 96
    freeze_epochs: Annotated[int, _at_least(0)] = 0
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


class GateConfig(StageConfig):
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
    # New data against the champion's (imgflow.data.drift): a check drifts beyond noise (p < alpha / checks)
    # and its threshold: a histogram's Jensen-Shannon distance, the champion's embeddings' squared MMD,
    # and the fall of the champion's accuracy on new held-out records.
    alpha: Annotated[float, Rule(lambda v: 0 < v < 1, "above 0 and below 1")] = 0.01
    max_distance: Annotated[float, _fraction()] = 0.15
    max_mmd: Annotated[float, _above(0)] = 0.05
    max_accuracy_drop: Annotated[float, _fraction()] = 0.05
    # The held-out records (val and test splits) the champion embeds and predicts, at most.
    sample: Annotated[int, _at_least(20)] = 500


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
    "export": ExportConfig,
}


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from and how to read it; ``name`` also names the model in the registry.

    ``sections`` holds per-stage settings from the spec file (``[clean]``, ``[train]``, ...), layered
    under the command line's; ``search`` its ``[search]`` table, the space ``imgflow tune`` searches
    (``imgflow.training.tune.parse_space`` checks it).
    """

    name: str
    source: str
    limit: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    dataset: DatasetSpec
    artifacts: str  # a folder (resolved) or an object-store URI (s3://bucket/prefix)
    download: DownloadConfig
    clean: CleanConfig
    shard: ShardConfig
    train: TrainConfig
    gate: GateConfig
    drift: DriftConfig
    export: ExportConfig
    # The [train] settings the spec and the command line set: with a budget, the recipe chooses the rest.
    fixed: tuple[str, ...] = ()

    def of(self, kind: type[Config]) -> Config:
        """The stage config of type ``kind`` (``[gate]``'s for ``GateConfig``): how a pipeline step
        names the config it builds with."""
        found = [getattr(self, f.name) for f in dataclasses.fields(self) if type(getattr(self, f.name)) is kind]
        if len(found) != 1:
            raise TypeError(f"a run has one config of each stage config type, not {len(found)} of {kind.__name__}")
        return typing.cast("Config", found[0])


def _spec_from_toml(path: Path) -> DatasetSpec:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"dataset spec {path} is not valid TOML: {exc}") from None
    if "source" not in data:
        raise ConfigError(f"dataset spec {path} has no 'source' (e.g. source = \"sample:mnist5k\")")
    known = {"name", "source", "limit", "options", "search", *SECTIONS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"dataset spec {path}: unknown key(s) {', '.join(unknown)}; known: name, source, limit, options, "
            + ", ".join(f"[{section}]" for section in SECTIONS)
            + ", [search]"
        )
    for key, hint in (("name", str), ("source", str), ("limit", int), ("options", dict[str, Any]), ("search", dict[str, Any])):
        if key in data:
            check_value(f"dataset spec {path}: {key}", data[key], hint, _TOP_RULES.get(key))
    for key, value in data.get("options", {}).items():
        _check_plain(f"dataset spec {path}: options.{key}", value)
    for section in SECTIONS:
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"dataset spec {path}: [{section}] must be a table of settings, got {described(data[section])}")
    sections = {section: dict(data.get(section, {})) for section in SECTIONS}
    for section, values in sections.items():
        parse_section(SECTIONS[section], values, f"{path} [{section}]")
    return DatasetSpec(
        name=data.get("name", _name_from(path.stem)),
        source=data["source"],
        limit=data.get("limit"),
        options=dict(data.get("options", {})),
        sections=sections,
        search=dict(data.get("search", {})),
    )


# The value rules of a spec's top-level keys (test, words), as ``Rule`` gives its fields'.
_TOP_RULES = {
    "name": Rule(lambda v: NAME_PATTERN.fullmatch(v) is not None, "letters, digits, '.', '_' and '-' (it names the model's folder)"),
    "source": Rule(lambda v: ":" in v, 'a source spec "scheme:..." (e.g. "folder:/data/pets", "sample:mnist5k")'),
    "limit": _at_least(1),
}


def _check_plain(setting: str, value: Any) -> None:
    """Source options are keyed like settings (JSON): a TOML date or time is refused by name."""
    if isinstance(value, list):
        for item in value:
            _check_plain(setting, item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_plain(f"{setting}.{key}", item)
    elif not isinstance(value, (str, int, float, bool)):
        raise ConfigError(f"{setting} must be a string, a number, true or false, or a list or table of them, got {described(value)}")


def _name_from(text: str) -> str:
    """A model name from a file's or a source's name: what ``NAME_PATTERN`` does not allow becomes '-'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", text).lstrip("._-")[:100]
    return cleaned or "dataset"


def resolve_dataset(spec: str, search: tuple[Path, ...] = ()) -> DatasetSpec:
    """A dataset from a name (``datasets/NAME.toml``), a path to a TOML file, or a source spec.

    A source spec (``scheme:rest``, e.g. ``tfds:mnist``) gets default cleaning settings and is named after
    the last part of its path or name.
    """
    candidate = Path(spec)
    if spec.endswith(".toml"):
        if not candidate.is_file():
            raise ConfigError(f"dataset spec file {spec} does not exist")
        return _spec_from_toml(candidate)
    if ":" in spec:
        scheme, _, rest = spec.partition(":")
        base = rest.split("#", 1)[0].rstrip("/").replace("\\", "/").split("/")[-1]
        name = base.split(":", 1)[0].split(".")[0] or scheme
        return DatasetSpec(name=_name_from(name), source=spec)
    for folder in (*search, Path.cwd() / "datasets", REPO_DATASETS):
        path = folder / f"{spec}.toml"
        if path.is_file():
            return _spec_from_toml(path)
    known = sorted({p.stem for folder in (Path.cwd() / "datasets", REPO_DATASETS) for p in folder.glob("*.toml")})
    raise ConfigError(
        f"unknown dataset {spec!r}: not a file, not a source spec (scheme:...), and no datasets/{spec}.toml; "
        f"named datasets: {', '.join(known) or 'none'}"
    )


def build_run_config(
    dataset: str,
    artifacts: str | Path = "artifacts",
    *,
    epochs: int | None = None,
    min_accuracy: float | None = None,
    limit: int | None = None,
    budget: str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> RunConfig:
    """Resolve a dataset and layer overrides (``{"train": {"width": 32}}``, then the flags) on its spec."""
    spec = resolve_dataset(dataset)
    values = {section: {**spec.sections.get(section, {}), **(overrides or {}).get(section, {})} for section in SECTIONS}
    if epochs is not None:
        values["train"]["epochs"] = epochs
    if min_accuracy is not None:
        values["gate"]["min_accuracy"] = min_accuracy
    if budget is not None:
        values["train"]["budget"] = budget
    configs = {section: parse_section(cls, values[section], f"dataset {spec.name} [{section}]") for section, cls in SECTIONS.items()}
    fetch = configs.pop("download")
    effective_limit = limit if limit is not None else spec.limit
    check_value(f"dataset {spec.name} limit", effective_limit, int | None, _TOP_RULES["limit"])
    return RunConfig(
        dataset=spec,
        artifacts=str(artifacts) if is_remote(artifacts) else str(Path(artifacts).resolve()),
        download=DownloadConfig(source=spec.source, limit=effective_limit, options=spec.options, timeout=fetch.timeout),
        **configs,
        fixed=tuple(sorted(set(values["train"]) - {"budget"})),
    )
