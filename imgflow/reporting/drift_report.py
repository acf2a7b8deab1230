"""The drift report: every check as a table, and each histogram and the embeddings as a plot of the
reference beside the new data, so a person sees what moved (Markdown for the Prefect artifact, HTML
with the plots inline for a browser)."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from imgflow.data.profile import EDGES, Profile
from imgflow.reporting.reports import pyplot
from imgflow.serving.drift_checks import Check, describe


def _bin_labels(name: str, bins: int) -> list[str]:
    edges = EDGES[name]
    return [f"{edges[i]:g}+" if np.isinf(edges[i + 1]) else f"{edges[i]:g}" for i in range(bins)]


def plot_histograms(reference: Profile, new: Profile, names: Sequence[str], path: Path) -> None:
    """The reference's and the new data's frequencies of each statistic in ``names``, side by side."""
    plt = pyplot()
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        if name == "labels":
            bins = sorted(set(reference.labels) | set(new.labels))
            a = np.array([reference.labels.get(b, 0) for b in bins], np.float64)
            b = np.array([new.labels.get(b, 0) for b in bins], np.float64)
        else:
            a, b = reference.counts[name].astype(np.float64), new.counts[name].astype(np.float64)
            bins = _bin_labels(name, len(a))
        x = np.arange(len(bins))
        ax.bar(x - 0.2, a / max(a.sum(), 1), 0.4, label="champion's data")
        ax.bar(x + 0.2, b / max(b.sum(), 1), 0.4, label="new data")
        ax.set_xticks(x, labels=bins, rotation=90, fontsize=6)
        ax.set_title(name)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_embeddings(reference: np.ndarray, new: np.ndarray, path: Path) -> None:
    """Both samples of embeddings on the reference's first two principal components."""
    plt = pyplot()
    center = reference.mean(axis=0)
    _, _, axes = np.linalg.svd(reference - center, full_matrices=False)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for points, label in ((reference, "champion's held-out data"), (new, "new data")):
        flat = (points - center) @ axes[:2].T
        ax.scatter(flat[:, 0], flat[:, 1], s=6, alpha=0.5, label=label)
    ax.set_title("the champion's embeddings (principal components)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report_markdown(title: str, note: str, checks: Sequence[Check]) -> str:
    drifted = [c for c in checks if c.drifted]
    verdict = "DRIFTED" if drifted else "no drift" if checks else "not compared"
    lines = [f"# Drift: {title}: {verdict}", "", f"- {note}", *[f"- **drifted** {describe(c)}" for c in drifted]]
    if checks:
        lines += ["", "| check | measure | size | threshold | p-value | drifted |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {c.name} | {c.measure} | {c.size:.4f} | {c.threshold} | {c.p_value:.3g} | {'yes' if c.drifted else ''} |" for c in checks
        ]
    return "\n".join(lines) + "\n"


def report_html(markdown_title: str, note: str, checks: Sequence[Check], plots: Mapping[str, Path]) -> str:
    """A self-contained page: the verdict, the table of checks (drifted rows marked) and the plots inline."""
    rows = "".join(
        f"<tr class='{'drifted' if c.drifted else ''}'><td>{html.escape(c.name)}</td><td>{c.measure}</td><td>{c.size:.4f}</td>"
        f"<td>{c.threshold}</td><td>{c.p_value:.3g}</td><td>{'yes' if c.drifted else ''}</td><td>{html.escape(c.detail)}</td></tr>"
        for c in checks
    )
    images = "".join(
        f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"
        for caption, path in plots.items()
    )
    verdict = "drifted" if any(c.drifted for c in checks) else "no drift" if checks else "not compared"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Drift: "
        f"{html.escape(markdown_title)}</title><style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px}}"
        "tr.drifted{background:#fdd}</style></head><body>"
        f"<h1>Drift: {html.escape(markdown_title)}: {verdict}</h1><p>{html.escape(note)}</p>"
        "<table><tr><th>check</th><th>measure</th><th>size</th><th>threshold</th><th>p-value</th><th>drifted</th><th>detail</th></tr>"
        f"{rows}</table>{images}</body></html>"
    )
