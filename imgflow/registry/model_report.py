"""The model report: one self-contained HTML page per registered version (``report.html``).

Everything is inline (styles, plots and thumbnails as data: URIs), so the file opens in any browser,
from a laptop or an artifact store, with no server and no network. It shows the gate decision and its
numbers, per-class metrics, a budgeted run's race of candidates, the confusion matrix, the training
curves, the hardest misclassified test images, the int8 variant's accuracy, the data, model and code fingerprints, and the lineage from the
dataset through each stage to the model. The page is ``templates/report.html.j2`` (Jinja2, autoescaped).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("imgflow.registry", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
)


def data_uri(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def render(
    card: Mapping[str, Any],
    metrics: Mapping[str, Any],
    images: Mapping[str, bytes],
    mistakes: Sequence[Mapping[str, Any]],
    exemplars: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The report's HTML. ``images``: PNG bytes of ``confusion_matrix`` and ``training_curves``;
    ``mistakes`` and ``exemplars``: rows of misclassified.parquet and exemplars.parquet (id, label,
    predicted, confidence, image, heatmap: the Grad-CAM overlay or None). The ``{version}``
    placeholder is left for the registry to fill in."""
    export = card.get("export", {})
    race = (card.get("training") or {}).get("race") or []  # a budgeted run's candidates (imgflow.training.race)
    return _TEMPLATES.get_template("report.html.j2").render(
        race=race,
        figure=next((key for key in race[0] if key.startswith("val_")), "") if race else "",
        card=card,
        metrics=metrics,
        export=export,
        int8=export.get("int8") or {},
        promoted=card["decision"]["promote"],
        plots={name: data_uri(images[name]) for name in ("confusion_matrix", "training_curves") if name in images},
        mistakes=[_thumbnails(row) for row in mistakes],
        exemplars=[_thumbnails(row) for row in exemplars],
    )


def _thumbnails(row: Mapping[str, Any]) -> dict[str, Any]:
    heatmap = row.get("heatmap")
    return {**row, "uri": data_uri(row["image"]), "heatmap_uri": data_uri(heatmap) if heatmap else None}


def report_html(card: Mapping[str, Any], validate_dir: Path, train_dir: Path) -> str:
    """The report of a candidate from its card and its validate and train outputs; ``{version}`` is
    left for the registry to fill in."""
    import pyarrow.parquet as pq

    metrics = json.loads((validate_dir / "metrics.json").read_text())
    images = {
        "confusion_matrix": (validate_dir / "confusion_matrix.png").read_bytes(),
        "training_curves": (train_dir / "training_curves.png").read_bytes(),
    }
    mistakes = pq.read_table(validate_dir / "misclassified.parquet").to_pylist()
    exemplars = pq.read_table(validate_dir / "exemplars.parquet").to_pylist() if (validate_dir / "exemplars.parquet").is_file() else []
    return render(card, metrics, images, mistakes, exemplars)
