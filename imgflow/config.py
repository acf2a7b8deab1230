"""Small typed configs, one per stage, and the named dataset specs in ``datasets/*.toml``.

Each stage's cache key hashes only its own config, so changing a field reruns exactly that stage and
the ones downstream of it.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgflow.errors import ConfigError
from imgflow.objectstore import is_remote

REPO_DATASETS = Path(__file__).resolve().parent.parent / "datasets"
BACKENDS = ("onnx", "onnx-int8", "tensorflow")  # how imgflow.predict runs a registered model
MODEL_NAMES = ("cnn", "resnet9", "transfer")  # what imgflow.models.build_model builds (checked without Keras)


@dataclass(frozen=True)
class DownloadConfig:
    source: str
    limit: int | None = None  # keep a fixed sample of this many records (see stages.download.sample)
    options: dict[str, Any] = field(default_factory=dict)
    # Seconds a fetch may keep retrying failures that may pass (imgflow.network); it cannot change
    # what is fetched, so it is no part of the cache key.
    timeout: float = field(default=60.0, metadata={"key": False})


@dataclass(frozen=True)
class FetchConfig:
    """A spec's ``[download]`` section."""

    timeout: float = 60.0


@dataclass(frozen=True)
class CleanConfig:
    image_size: tuple[int, int] | None = None  # (height, width); None: the most common size
    channels: int | None = None  # 1 or 3; None: 1 when every image is grayscale, else 3
    class_names: tuple[str, ...] | None = None  # None: the sorted labels found
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    split_salt: str = ""


@dataclass(frozen=True)
class ShardConfig:
    # Shards hold consecutive records of the clean table, one file per split for each: about
    # shard_bytes of records (TensorFlow's guidance: on the order of 100 MB), or records_per_shard.
    # Below min_shards shards of shard_bytes, as many as min_shards while each still holds 10 MB:
    # readers and the parallel writers then have files to share (TensorFlow's guidance again).
    shard_bytes: int = 100 * 2**20
    records_per_shard: int | None = None
    min_shards: int = 8


@dataclass(frozen=True)
class TrainConfig:
    model: str = "cnn"
    width: int = 24
    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 3e-3
    dropout: float = 0.3
    translate: float = 0.1
    rotate: float = 0.05
    zoom: float = 0.1
    seed: int = 0
    class_weights: bool = False  # weigh classes by inverse frequency, for imbalanced data
    # Transfer learning (model = "transfer"): a keras.applications backbone, its weights from a local
    # file (None: random; nothing is downloaded), trained frozen for freeze_epochs, then fine-tuned
    # at learning_rate * fine_tune_factor.
    backbone: str = "MobileNetV2"
    backbone_weights: str | None = None
    backbone_size: int = 96
    freeze_epochs: int = 0
    fine_tune_factor: float = 0.1
    # Hardware (imgflow.accel): "auto" = mixed_bfloat16 and XLA on a GPU, float32 without XLA on a CPU.
    precision: str = "auto"
    jit_compile: str | bool = "auto"
    augment_on: str = "auto"  # "device": in the train step; "host": in tf.data; auto: device on a GPU
    deterministic: bool = True  # same inputs, same model bits (TensorFlow op determinism)


@dataclass(frozen=True)
class GateConfig:
    min_accuracy: float = 0.98
    tolerance: float = 0.005  # how much worse than the champion a candidate may be


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17
    parity_tolerance: float = 1e-5
    parity_batch: int = 256
    int8: bool = True  # also try an int8-quantized ONNX model
    int8_max_drop: float = 0.005  # keep it only if it loses at most this much test accuracy
    calibration_images: int = 256


SECTIONS = {
    "download": FetchConfig,
    "clean": CleanConfig,
    "shard": ShardConfig,
    "train": TrainConfig,
    "gate": GateConfig,
    "export": ExportConfig,
}


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from and how to read it; ``name`` also names the model in the registry.

    ``sections`` holds per-stage settings from the spec file (``[clean]``, ``[train]``, ...), layered
    under the command line's.
    """

    name: str
    source: str
    limit: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    dataset: DatasetSpec
    artifacts: str  # a folder (resolved) or an object-store URI (s3://bucket/prefix)
    download: DownloadConfig
    clean: CleanConfig
    shard: ShardConfig
    train: TrainConfig
    gate: GateConfig
    export: ExportConfig


def parse_section(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    # TOML has arrays, the configs tuples: keep configs hashable and their JSON the same.
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _spec_from_toml(path: Path) -> DatasetSpec:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"dataset spec {path} is not valid TOML: {exc}") from None
    if "source" not in data:
        raise ConfigError(f"dataset spec {path} has no 'source' (e.g. source = \"sample:mnist5k\")")
    known = {"name", "source", "limit", "options", *SECTIONS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"dataset spec {path}: unknown key(s) {', '.join(unknown)}; known: name, source, limit, options, "
            + ", ".join(f"[{section}]" for section in SECTIONS)
        )
    sections = {section: dict(data.get(section, {})) for section in SECTIONS}
    for section, values in sections.items():
        parse_section(SECTIONS[section], values, f"{path} [{section}]")
    return DatasetSpec(
        name=data.get("name", path.stem),
        source=data["source"],
        limit=data.get("limit"),
        options=dict(data.get("options", {})),
        sections=sections,
    )


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
        return DatasetSpec(name=name, source=spec)
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
    overrides: dict[str, dict[str, Any]] | None = None,
) -> RunConfig:
    """Resolve a dataset and layer overrides (``{"train": {"width": 32}}``, then the flags) on its spec."""
    spec = resolve_dataset(dataset)
    values = {section: {**spec.sections.get(section, {}), **(overrides or {}).get(section, {})} for section in SECTIONS}
    if epochs is not None:
        values["train"]["epochs"] = epochs
    if min_accuracy is not None:
        values["gate"]["min_accuracy"] = min_accuracy
    configs = {section: parse_section(cls, values[section], f"dataset {spec.name} [{section}]") for section, cls in SECTIONS.items()}
    train_cfg, gate, fetch = configs["train"], configs["gate"], configs.pop("download")
    if isinstance(fetch.timeout, bool) or not isinstance(fetch.timeout, (int, float)) or fetch.timeout <= 0:
        raise ConfigError(f"dataset {spec.name} [download] timeout must be a number of seconds above 0, got {fetch.timeout!r}")
    if train_cfg.model not in MODEL_NAMES:
        raise ConfigError(f"unknown model {train_cfg.model!r}; known: {', '.join(MODEL_NAMES)}")
    if train_cfg.epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {train_cfg.epochs}")
    if not 0.0 <= gate.min_accuracy <= 1.0:
        raise ConfigError(f"min-accuracy must be between 0 and 1, got {gate.min_accuracy}")
    effective_limit = limit if limit is not None else spec.limit
    if effective_limit is not None and effective_limit < 1:
        raise ConfigError(f"limit must be positive, got {effective_limit}")
    return RunConfig(
        dataset=spec,
        artifacts=str(artifacts) if is_remote(artifacts) else str(Path(artifacts).resolve()),
        download=DownloadConfig(source=spec.source, limit=effective_limit, options=spec.options, timeout=fetch.timeout),
        **configs,
    )
