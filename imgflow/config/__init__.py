"""Small typed configs, one per stage, and the named dataset specs in ``datasets/*.toml``.

Each stage config (``imgflow.config.stages``, re-exported here) is a frozen, strict pydantic model
(``imgflow.config.checks.StageConfig``) whose fields carry their rules (``Annotated[int,
_at_least(1)]``); a spec's section is read with ``parse_section``, which says what is wrong in one line
naming the setting. Each stage's cache key
hashes only its own config, so changing a field reruns exactly that stage and the ones downstream of it.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from imgflow.config.checks import Rule, check_value, described, parse_section
from imgflow.config.labels import read_labels
from imgflow.config.stages import (  # each stage's settings, re-exported: the package is their one address
    BACKBONE_NAMES as BACKBONE_NAMES,
)
from imgflow.config.stages import (
    BACKENDS as BACKENDS,
)
from imgflow.config.stages import (
    DRIFT_POLICIES as DRIFT_POLICIES,
)
from imgflow.config.stages import (
    FLIPS as FLIPS,
)
from imgflow.config.stages import (
    IMAGENET as IMAGENET,
)
from imgflow.config.stages import (
    IMAGENET_SIZE as IMAGENET_SIZE,
)
from imgflow.config.stages import (
    LITE0 as LITE0,
)
from imgflow.config.stages import (
    METRICS as METRICS,
)
from imgflow.config.stages import (
    MIN_TEST_RECORDS as MIN_TEST_RECORDS,
)
from imgflow.config.stages import (
    MODEL_NAMES as MODEL_NAMES,
)
from imgflow.config.stages import (
    NAME_PATTERN as NAME_PATTERN,
)
from imgflow.config.stages import (
    RANDOM as RANDOM,
)
from imgflow.config.stages import (
    RANDOM_SIZE as RANDOM_SIZE,
)
from imgflow.config.stages import (
    SCHEDULE_NAMES as SCHEDULE_NAMES,
)
from imgflow.config.stages import (
    SECTIONS as SECTIONS,
)
from imgflow.config.stages import (
    AuditConfig as AuditConfig,
)
from imgflow.config.stages import (
    CleanConfig as CleanConfig,
)
from imgflow.config.stages import (
    DownloadConfig as DownloadConfig,
)
from imgflow.config.stages import (
    DriftConfig as DriftConfig,
)
from imgflow.config.stages import (
    ExportConfig as ExportConfig,
)
from imgflow.config.stages import (
    FetchConfig as FetchConfig,
)
from imgflow.config.stages import (
    GateConfig as GateConfig,
)
from imgflow.config.stages import (
    ShardConfig as ShardConfig,
)
from imgflow.config.stages import (
    TrainConfig as TrainConfig,
)
from imgflow.config.stages import (
    _at_least as _at_least,
)
from imgflow.runtime.errors import ConfigError
from imgflow.store.roots import canonical_root

Config = TypeVar("Config")
REPO_DATASETS = Path(__file__).resolve().parents[2] / "datasets"


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from and how to read it; ``name`` also names the model in the registry.

    ``sections`` holds per-stage settings from the spec file (``[clean]``, ``[train]``, ...), layered
    under the command line's; ``search`` its ``[search]`` table, the space ``imgflow tune`` searches
    (``imgflow.training.search.parse_space`` checks it).
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
    audit: AuditConfig
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
    if isinstance(sections["clean"].get("labels"), str):  # the spec's folder's, wherever the run starts
        sections["clean"]["labels"] = str(path.parent.resolve() / Path(sections["clean"]["labels"]).expanduser())
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
    clean = configs["clean"]
    if isinstance(clean, CleanConfig) and clean.labels is not None:
        configs["clean"] = clean.replace(relabel=read_labels(Path(clean.labels)))
    fetch = configs.pop("download")
    effective_limit = limit if limit is not None else spec.limit
    check_value(f"dataset {spec.name} limit", effective_limit, int | None, _TOP_RULES["limit"])
    return RunConfig(
        dataset=spec,
        artifacts=canonical_root(artifacts),
        download=DownloadConfig(source=spec.source, limit=effective_limit, options=spec.options, timeout=fetch.timeout),
        **configs,
        fixed=tuple(sorted(set(values["train"]) - {"budget"})),
    )
