"""The audit's reports (``imgflow.stages.audit``): a Markdown summary for the Prefect artifact, and a
self-contained HTML page that shows the findings as pictures, so a person can judge each one."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

THUMBNAIL = 96  # pixels a side of each picture in the page (small images are enlarged, sharply)


def _counts(counts: Mapping[str, int]) -> str:
    return (
        f"{counts['label_issues']} suspected label errors, {counts['near_duplicates']} near-duplicate pairs "
        f"({counts['cross_split']} across splits: leakage), {counts['outliers']} outliers"
    )


def report_markdown(
    title: str,
    note: str,
    counts: Mapping[str, int],
    issues: Sequence[Mapping[str, Any]],
    pairs: Sequence[Mapping[str, Any]],
    outliers: Sequence[Mapping[str, Any]],
) -> str:
    """The counts and the top ten of each finding (the lists are the top ones, most important first), as Markdown."""
    lines = [f"# Audit: {title}", "", note, "", f"**{_counts(counts)}**", ""]
    if issues:
        lines += ["## Suspected label errors", "", "| record | split | given | suggested | label quality |", "|---|---|---|---|---:|"]
        lines += [f"| {i['id']} | {i['split']} | {i['label']} | {i['suggested']} | {i['score']:.3f} |" for i in issues[:10]]
        lines.append("")
    if pairs:
        lines += [
            "## Near-duplicates (leakage first)",
            "",
            "| first | second | distance | hash bits | across splits |",
            "|---|---|---:|---:|---|",
        ]
        lines += [
            f"| {p['first']['id']} ({p['first']['split']}) | {p['second']['id']} ({p['second']['split']}) | {p['distance']:.4f} | "
            f"{p['hash_bits']} | {'yes' if p['cross_split'] else ''} |"
            for p in pairs[:10]
        ]
        lines.append("")
    if outliers:
        lines += ["## Outliers", "", "| record | split | label | why | neighbour distance |", "|---|---|---|---|---:|"]
        lines += [f"| {o['id']} | {o['split']} | {o['label']} | {o['why']} | {o['score']:.4f} |" for o in outliers[:10]]
        lines.append("")
    return "\n".join(lines)


def thumbnail(pixels: np.ndarray) -> str:
    """A record's pixels [H, W, C] as an inline PNG, ``THUMBNAIL`` pixels on its longer side."""
    from PIL import Image

    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    scale = THUMBNAIL / max(image.size)
    image = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR,
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"


def _figure(pixels: Mapping[str, np.ndarray], record: Mapping[str, Any], caption: str) -> str:
    found = pixels.get(record["id"])
    picture = f"<img src='{thumbnail(found)}' alt='{html.escape(record['id'])}'>" if found is not None else ""
    return f"<figure>{picture}<figcaption>{caption}</figcaption></figure>"


def report_html(
    title: str,
    note: str,
    counts: Mapping[str, int],
    issues: Sequence[Mapping[str, Any]],
    pairs: Sequence[Mapping[str, Any]],
    outliers: Sequence[Mapping[str, Any]],
    pixels: Mapping[str, np.ndarray],
    shown: int,
) -> str:
    """A self-contained page: the ``counts``, then up to ``shown`` of each finding (the lists are the top
    ones) as pictures (``pixels`` by record id): label errors with the given and the suggested label,
    near-duplicate pairs side by side (leakage first), outliers."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Audit: {esc(title)}</title><style>body{{font-family:sans-serif;margin:2em}}",
        "figure{display:inline-block;margin:6px;text-align:center;font-size:12px;vertical-align:top}",
        "figure img{image-rendering:pixelated;border:1px solid #ccc}.pair{display:inline-block;border:1px solid #ddd;margin:4px;padding:2px}",
        ".leak{background:#fdd}.given{color:#b00}.suggested{color:#070}</style></head><body>",
        f"<h1>Audit: {esc(title)}</h1><p>{esc(note)}</p><p><b>{esc(_counts(counts))}</b></p>",
    ]
    if issues:
        parts.append(f"<h2>Suspected label errors ({counts['label_issues']}; the {min(shown, len(issues))} most doubtful)</h2>")
        parts += [
            _figure(
                pixels,
                i,
                f"{esc(i['id'])} ({esc(i['split'])})<br><span class='given'>given {esc(i['label'])}</span><br>"
                f"<span class='suggested'>suggested {esc(i['suggested'])}</span><br>quality {i['score']:.3f}",
            )
            for i in issues[:shown]
        ]
    if pairs:
        parts.append(f"<h2>Near-duplicates ({counts['near_duplicates']}; leakage across splits first)</h2>")
        for p in pairs[:shown]:
            sides = "".join(
                _figure(pixels, p[side], f"{esc(p[side]['id'])}<br>{esc(p[side]['split'])}, {esc(p[side]['label'])}")
                for side in ("first", "second")
            )
            detail = f"distance {p['distance']:.4f}, hash bits {p['hash_bits']}"
            parts.append(f"<div class='pair{' leak' if p['cross_split'] else ''}'>{sides}<br><small>{detail}</small></div>")
    if outliers:
        parts.append(f"<h2>Outliers ({len(outliers)}; farthest first)</h2>")
        parts += [
            _figure(pixels, o, f"{esc(o['id'])} ({esc(o['split'])})<br>{esc(o['label'])}, score {o['score']:.3f}") for o in outliers[:shown]
        ]
    parts.append("</body></html>")
    return "".join(parts)
