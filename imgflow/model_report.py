"""The model report: one self-contained HTML page per registered version (``report.html``).

Everything is inline (styles, plots and thumbnails as data: URIs), so the file opens in any browser,
from a laptop or an artifact store, with no server and no network. It shows the gate decision and its
numbers, per-class metrics, the confusion matrix, the training curves, the hardest misclassified test
images, the int8 variant's accuracy, the data, model and code fingerprints, and the lineage from the
dataset through each stage to the model.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2330; background: #f5f6f8; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 10px; border-bottom: 1px solid #d9dce3; padding-bottom: 4px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 12px; font-weight: 600; font-size: 13px; color: white; }
.promoted { background: #1f8a4c; } .rejected { background: #b3261e; }
.tiles { display: flex; gap: 12px; flex-wrap: wrap; margin-top: 16px; }
.tile { background: white; border: 1px solid #d9dce3; border-radius: 8px; padding: 10px 16px; min-width: 150px; }
.tile b { display: block; font-size: 22px; } .tile span { color: #5b6475; font-size: 13px; }
table { border-collapse: collapse; background: white; font-size: 14px; }
th, td { border: 1px solid #d9dce3; padding: 4px 10px; text-align: right; } th { background: #eef0f4; }
td.l, th.l { text-align: left; } code { font-size: 12px; word-break: break-all; }
.plots { display: flex; gap: 16px; flex-wrap: wrap; align-items: flex-start; }
.plots img { background: white; border: 1px solid #d9dce3; border-radius: 6px; max-width: 460px; }
.plots img.training_curves { max-width: 100%; width: 560px; }
.mistakes { display: grid; grid-template-columns: repeat(auto-fill, minmax(112px, 1fr)); gap: 10px; }
.mistakes figure { margin: 0; background: white; border: 1px solid #d9dce3; border-radius: 6px; padding: 6px; text-align: center; font-size: 12px; }
.mistakes img { width: 96px; height: 96px; image-rendering: pixelated; background: #000; }
.muted { color: #5b6475; }
"""


def data_uri(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{cell}</td>' for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render(card: Mapping[str, Any], metrics: Mapping[str, Any], images: Mapping[str, bytes], mistakes: Sequence[Mapping[str, Any]]) -> str:
    """The report's HTML. ``images``: PNG bytes of ``confusion_matrix`` and ``training_curves``;
    ``mistakes``: rows of misclassified.parquet (id, label, predicted, confidence, image)."""
    accuracy = card["metrics"]["accuracy"]
    champion = card["metrics"].get("champion_accuracy")
    promoted = card["decision"]["promote"]
    export = card.get("export", {})
    int8 = export.get("int8") or {}
    tiles = [
        (f"{accuracy:.4f}", f"test accuracy ({card['metrics']['test_records']} records)"),
        (f"{champion:.4f}" if champion is not None else "none", "champion before it, same test split"),
        (f"{card['parity']['max_abs_diff']:.1e}", "SavedModel vs ONNX max difference"),
        (f"{int8['accuracy']:.4f}" if int8 else "-", "int8 ONNX accuracy" + ("" if int8.get("exported", True) else " (not exported)")),
    ]
    per_class = [
        [_esc(r["class"]), f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", r["support"]]
        for r in metrics["per_class"]
    ]
    figures = "".join(
        f'<figure><img src="{data_uri(row["image"])}" alt="{_esc(row["id"])}">'
        f'<figcaption><b>{_esc(row["label"])}</b> read as <b>{_esc(row["predicted"])}</b><br>'
        f'{row["confidence"]:.1%} sure<br><span class="muted">{_esc(row["id"])}</span></figcaption></figure>'
        for row in mistakes
    )
    lineage = [
        [_esc(stage), f"<code>{_esc(item['key'])}</code>", f"<code>{_esc(item['fingerprint'][:16])}</code>", f"<code>{_esc(item['path'])}</code>"]
        for stage, item in card["lineage"].items()
    ]
    fingerprints = [
        ["data", f"<code>{_esc(card['data_fingerprint'])}</code>"],
        ["model", f"<code>{_esc(card['model_fingerprint'])}</code>"],
        ["code", f"<code>{_esc(card.get('code_fingerprint', 'not recorded'))}</code>"],
    ]
    plots = "".join(
        f'<img class="{name}" src="{data_uri(images[name])}" alt="{name.replace("_", " ")}">' for name in ("confusion_matrix", "training_curves") if name in images
    )
    shape = " x ".join(map(str, card["image_shape"]))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(card['name'])} {{version}}: model report</title><style>{_STYLE}</style></head>
<body><main>
<h1>{_esc(card['name'])} {{version}} <span class="badge {'promoted' if promoted else 'rejected'}">{'PROMOTED' if promoted else 'REJECTED'}</span></h1>
<div class="muted">source <code>{_esc(card['source'])}</code> &middot; input {shape} pixels &middot; classes {_esc(', '.join(card['class_names']))} &middot; ONNX opset {_esc(export.get('opset', '?'))}</div>
<div class="tiles">{''.join(f'<div class="tile"><b>{v}</b><span>{_esc(t)}</span></div>' for v, t in tiles)}</div>
<h2>Gate decision</h2><ul>{''.join(f'<li>{_esc(r)}</li>' for r in card['decision']['reasons'])}</ul>
<h2>Per class (test split)</h2>{_table(['class', 'precision', 'recall', 'F1', 'support'], per_class)}
<h2>Confusion matrix and training curves</h2><div class="plots">{plots}</div>
<h2>Hardest misclassified test images</h2>
<p class="muted">The {len(mistakes)} test images the model got wrong with the most confidence, hardest first.</p>
<div class="mistakes">{figures or '<p>None: every test image was classified correctly.</p>'}</div>
<h2>Fingerprints</h2>{_table(['what', 'sha256'], fingerprints)}
<h2>Lineage: dataset &rarr; shards &rarr; model</h2>{_table(['stage', 'key', 'output fingerprint', 'path'], lineage, left=4)}
</main></body></html>
"""


def report_html(card: Mapping[str, Any], validate_dir: Path, train_dir: Path) -> str:
    """The report of a candidate from its card and its validate and train outputs; ``{version}`` is
    left for the registry to fill in."""
    import json

    import pyarrow.parquet as pq

    metrics = json.loads((validate_dir / "metrics.json").read_text())
    images = {
        "confusion_matrix": (validate_dir / "confusion_matrix.png").read_bytes(),
        "training_curves": (train_dir / "training_curves.png").read_bytes(),
    }
    mistakes = pq.read_table(validate_dir / "misclassified.parquet").to_pylist()
    return render(card, metrics, images, mistakes)
