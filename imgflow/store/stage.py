"""What a stage is: a name, a code version, and a function that builds its output into a folder; the
unit the store keys (``Stage.key``: name, version, config, input fingerprints) and builds (``Stage.run``).

It lives with the store, below the stages: each stage module defines one (``imgflow.stages.shard.SHARD``,
...) and imports nothing from another module of ``imgflow/stages/``; ``imgflow.pipeline`` declares how
they connect (``Step``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgflow.results import INFO_TYPES, Info, StageResult
from imgflow.runtime.errors import UserError, note_stage
from imgflow.store.artifacts import KEY_LENGTH, ArtifactStore, Built
from imgflow.store.fingerprint import stable_hash


@dataclass(frozen=True)
class Stage:
    """One arrow of the pipeline: a name, a code version, and a function that builds its output.

    ``build(out_dir, config, inputs)`` receives the upstream results by name and returns its info model
    (counts, metrics: ``imgflow.results``) that lands in the manifest and the run summary. Long builds
    report progress with ``imgflow.runtime.progress.report``. Bump ``version`` whenever a change to the stage's
    code changes its output: it is part of the key.

    ``identity(config)``, when given, is what the key holds of the config: the config with any field that
    names something outside it (a weights file) replaced by that thing's content hash, so the key
    follows content, never a path. ``tensorflow``, whether building it imports
    TensorFlow (a run about to build one imports it while Prefect's server starts). ``relevant(inputs)``,
    when given, is the part of its inputs that bears on the output: the key and the build see only that.
    """

    name: str
    version: str
    build: Callable[[Path, Any, Mapping[str, StageResult]], Built]
    identity: Callable[[Any], Any] | None = None
    tensorflow: bool = False
    relevant: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None

    @property
    def info(self) -> type[Info]:
        """The type of its info: ``imgflow.results.INFO_TYPES``' entry (the base type for an ad-hoc stage)."""
        return INFO_TYPES.get(self.name, Info)

    def key(self, config: Any, inputs: Mapping[str, StageResult | str]) -> str:
        inputs = self.relevant(inputs) if self.relevant is not None else inputs
        fingerprints = {name: value.fingerprint if isinstance(value, StageResult) else value for name, value in inputs.items()}
        held = self.identity(config) if self.identity is not None else config
        return stable_hash([self.name, self.version, held, fingerprints])[:KEY_LENGTH]

    def run(self, store: ArtifactStore, config: Any, inputs: Mapping[str, StageResult | str], *, force: bool = False) -> StageResult:
        key = self.key(config, inputs)
        inputs = self.relevant(inputs) if self.relevant is not None else inputs
        # Inputs built elsewhere are fetched into a local mirror only when this stage really runs.
        results = {n: v for n, v in inputs.items() if isinstance(v, StageResult)}
        try:
            return store.build(
                self.name,
                key,
                lambda out_dir: self.build(out_dir, config, {n: store.localize(v) for n, v in results.items()}),
                config=config,
                inputs={n: v.fingerprint if isinstance(v, StageResult) else v for n, v in inputs.items()},
                force=force,
            )
        except Exception as error:
            if not isinstance(error, UserError):
                source = {"source": config.source} if hasattr(config, "source") else {}
                note_stage(error, self.name, {**source, **{n: v.path for n, v in results.items()}})
            raise
