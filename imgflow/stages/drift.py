"""drift: new data (a date partition, or a whole source) against the data the champion learned from.

Output folder::

    drift.json     every check (``imgflow.serving.drift_checks.Check``: statistic, measure, size, threshold,
                   p-value, drifted) and what was compared with what
    report.md      the same for a person (the Prefect artifact)
    report.html    the checks, with the histograms of both data side by side and the champion's
                   embeddings of both on one plot
    histograms.png, embeddings.png   those plots (when there was something to compare)

Inputs: ``data``, a clean table, and ``reference``, the current champion's registry folder (its
``data_profile.json``, the profile of the table it learned from, and ``reference.npz``, its view of its
own held-out records: ``imgflow.serving.views``), absent when there is no champion yet: then nothing
is compared and nothing drifts. The new data's view is the champion on its held-out records (val and
test) too, at most ``[drift] sample`` of them. What drifted is for the gate to judge (``[gate]
max_drift``): this stage only measures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgflow.config import DriftConfig
from imgflow.data.cleantable import pixel_array
from imgflow.data.profile import PROFILE_FILE, Profile, read_profile
from imgflow.data.tables import open_parquet
from imgflow.reporting.drift_report import plot_embeddings, plot_histograms, report_html, report_markdown
from imgflow.results import CleanInfo, DriftInfo, StageResult
from imgflow.serving.drift_checks import Check, describe, judge, profile_checks, view_checks
from imgflow.serving.inference import OnnxModel
from imgflow.serving.views import HELD_OUT, REFERENCE_FILE, ModelView, model_view, read_view, unless_learned_from
from imgflow.store.files import write_json_atomic
from imgflow.store.stage import Stage

DATA_PROFILE = "data_profile.json"  # the champion's profile, in its registry folder


def _held_out(data: StageResult, shape: tuple[int, ...], text: bool) -> Iterator[tuple[np.ndarray, list[str], list[str] | None]]:
    """The clean table's val and test records, in table order: pixels, label names and texts."""
    columns = ["pixels", "label_name", "split", *(["text"] if text else [])]
    for batch in open_parquet(data.file("records.parquet")).iter_batches(batch_size=512, columns=columns):
        chosen = batch.filter(pc.is_in(batch.column("split"), pa.array(HELD_OUT)))
        if chosen.num_rows:
            texts = chosen.column("text").to_pylist() if text else None
            yield pixel_array(chosen.column("pixels"), shape), chosen.column("label_name").to_pylist(), texts


def _views(champion: Path, data: StageResult, config: DriftConfig) -> tuple[ModelView, ModelView] | str:
    """The champion's view of its own held-out records and of the new ones, or why there are none."""
    assert isinstance(data.info, CleanInfo), data.stage
    if not (champion / REFERENCE_FILE).is_file():
        return "the champion has no view of its held-out records (exported before imgflow kept one)"
    model = OnnxModel(champion / "model.onnx", keep_memory=False, embeddings=True)
    if model.image_shape != list(data.info.image_shape):
        return f"the champion takes images of {model.image_shape}, the new data is {data.info.image_shape}: embeddings not compared"
    if model.takes_text and data.info.text is None:
        return "the champion reads text, the new data has none: embeddings not compared"
    reference = read_view(champion / REFERENCE_FILE)
    held_out = _held_out(data, tuple(data.info.image_shape), model.takes_text)
    return reference, model_view(model, reference.class_names, held_out, config.sample)


def _build(out_dir: Path, config: DriftConfig, inputs: Mapping[str, StageResult]) -> DriftInfo:
    data, champion = inputs["data"], inputs.get("reference")
    assert isinstance(data.info, CleanInfo), data.stage
    profile = read_profile(data.file(PROFILE_FILE))
    checks: list[Check] = []
    plots: dict[str, Path] = {}
    if champion is None:
        note = "nothing to compare with: no champion yet, or the champion learned from this data"
    elif not Path(champion.path, DATA_PROFILE).is_file():
        note = f"champion {champion.key} predates data profiles: nothing to compare with"
    else:
        reference = read_profile(Path(champion.path, DATA_PROFILE))
        checks = profile_checks(reference, profile, config)
        views = _views(Path(champion.path), data, config)
        note = f"{data.info.source} ({profile.records} records) against the data champion {champion.key} learned from ({reference.records})"
        if isinstance(views, str):
            note = f"{note}; {views}"
        else:
            checks += view_checks(*views, config)
        checks = judge(checks, config)
        _plot(out_dir, reference, profile, checks, views, plots)
    write_json_atomic(
        out_dir / "drift.json",
        {"note": note, "reference": champion.key if champion else None, "checks": [dataclasses.asdict(c) for c in checks]},
    )
    title = data.info.source
    (out_dir / "report.md").write_text(report_markdown(title, note, checks))
    (out_dir / "report.html").write_text(report_html(title, note, checks, plots))
    drifted = [c for c in checks if c.drifted]
    return DriftInfo(
        compared=bool(checks),
        drifted=bool(drifted),
        reasons=[describe(c) for c in drifted],
        records=profile.records,
        reference=champion.key if champion else None,
        note=note,
    )


def _plot(out_dir: Path, reference: Profile, new: Profile, checks: list[Check], views: object, plots: dict[str, Path]) -> None:
    """The histograms (drifted ones first) and the embeddings, as PNGs in ``out_dir`` and ``plots``."""
    ordered = sorted((c for c in checks if c.measure == "js_distance"), key=lambda c: (not c.drifted, c.name))
    if ordered:
        plots["the data's statistics: the champion's against the new"] = out_dir / "histograms.png"
        plot_histograms(reference, new, [c.name for c in ordered], out_dir / "histograms.png")
    if isinstance(views, tuple) and len(views[0]) and len(views[1]):
        plots["the champion's view of both"] = out_dir / "embeddings.png"
        plot_embeddings(views[0].embeddings, views[1].embeddings, out_dir / "embeddings.png")


DRIFT = Stage("drift", "1", _build, relevant=unless_learned_from)
