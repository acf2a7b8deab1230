"""The clip-art dataset: Debian's ``openclipart-svg`` drawings as a Parquet table of (image, text, label).

The package holds 7,458 public-domain SVG drawings under ``/usr/share/openclipart/svg/<category>/``
(22 categories, sub-folders inside some) and 663 symbolic links that repeat drawings under a second
folder: links are left out, so each drawing appears once. Each drawing is rendered to a PNG of
``size`` x ``size`` pixels on white (``rsvg-convert`` from ``librsvg2-bin``; aspect ratio kept, centred), and its
text is the title and description of its metadata (``cc:Work``'s ``dc:title`` and ``dc:description``).
Its keywords (``dc:subject``) are left out: they often name the category itself. The label is the
top-level category folder.

A drawing that fails to render or parse is not dropped: its row has empty image bytes, which the clean
stage quarantines as ``empty``, and the summary counts it. The table is written next to its destination
and renamed into place when complete.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from imgflow.runtime import cpus, progress
from imgflow.runtime.errors import SourceError

SVG_ROOT = Path("/usr/share/openclipart/svg")
PACKAGES = ("openclipart-svg", "librsvg2-bin")
SCHEMA = pa.schema([("id", pa.string()), ("image", pa.binary()), ("text", pa.string()), ("label", pa.string())])
_NS = {"cc": "http://web.resource.org/cc/", "dc": "http://purl.org/dc/elements/1.1/", "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#"}
_RENDER_SECONDS = 60  # a drawing that takes longer to render is counted as failed


def ensure_installed(svg_root: Path = SVG_ROOT, install: bool = True) -> None:
    """Install the Debian packages the recipe needs when they are missing (as root, with apt-get), or
    say how. ``install=False`` only checks."""
    missing = [
        name for name, present in (("openclipart-svg", svg_root.is_dir()), ("librsvg2-bin", shutil.which("rsvg-convert"))) if not present
    ]
    if not missing:
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SourceError(f"the clip-art recipe needs Debian's {' and '.join(missing)}: run `sudo {' '.join(command)}`")
    print(f"installing {', '.join(missing)} (apt-get)", flush=True)
    update = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, check=False)
    done = subprocess.run(command, capture_output=True, text=True, check=False) if update.returncode == 0 else update
    if done.returncode != 0:
        raise SourceError(f"`{' '.join(command)}` failed: {(done.stderr or done.stdout).strip()[-500:]}")


def drawings(svg_root: Path = SVG_ROOT) -> list[Path]:
    """Every drawing once: regular ``.svg`` files reached without following a symbolic link."""
    found = []
    for folder, folders, files in os.walk(svg_root):  # os.walk does not follow linked folders
        folders.sort()
        found += [Path(folder, name) for name in sorted(files) if name.endswith(".svg") and not Path(folder, name).is_symlink()]
    return found


def metadata_text(svg: Path) -> str:
    """The drawing's title and description (``cc:Work``), joined; "" when it has neither."""
    try:
        root = ET.parse(svg).getroot()
    except ET.ParseError:
        return ""
    work = root.find(".//rdf:RDF/cc:Work", _NS)
    if work is None:
        return ""
    parts = [(work.findtext(f"dc:{field}", default="", namespaces=_NS) or "").strip() for field in ("title", "description")]
    return ". ".join(part for part in parts if part)


def render(svg: Path, size: int) -> bytes:
    """The drawing as a ``size`` x ``size`` RGB PNG: fit inside the square with its aspect ratio kept,
    centred on white (b"" when rsvg-convert fails or takes too long)."""
    try:
        done = subprocess.run(
            ["rsvg-convert", "--width", str(size), "--height", str(size), "--keep-aspect-ratio", "--background-color", "white", str(svg)],
            capture_output=True,
            timeout=_RENDER_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return b""
    if done.returncode != 0 or not done.stdout:
        return b""
    drawing = Image.open(io.BytesIO(done.stdout)).convert("RGB")
    square = Image.new("RGB", (size, size), "white")
    square.paste(drawing, ((size - drawing.width) // 2, (size - drawing.height) // 2))
    out = io.BytesIO()
    square.save(out, format="PNG")
    return out.getvalue()


def build(output: Path, svg_root: Path = SVG_ROOT, size: int = 64, workers: int | None = None, limit: int | None = None) -> dict[str, Any]:
    """Render every drawing under ``svg_root`` into the Parquet table ``output``; return a summary."""
    files = drawings(svg_root)[:limit]
    if not files:
        raise SourceError(f"no SVG drawings under {svg_root}")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    failed, with_text = 0, 0
    labels: Counter[str] = Counter()

    def row(svg: Path) -> dict[str, Any]:
        relative = svg.relative_to(svg_root)
        return {"id": relative.as_posix(), "image": render(svg, size), "text": metadata_text(svg), "label": relative.parts[0]}

    try:
        with pq.ParquetWriter(tmp, SCHEMA) as writer, ThreadPoolExecutor(workers or cpus.threads()) as pool:
            batch: list[dict[str, Any]] = []
            for done, found in enumerate(pool.map(row, files), 1):  # in file order
                batch.append(found)
                failed += not found["image"]
                with_text += bool(found["text"])
                labels[found["label"]] += 1
                if len(batch) == 256 or done == len(files):
                    writer.write_table(pa.Table.from_pylist(batch, SCHEMA))
                    batch = []
                    progress.report(done, len(files), "drawings")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "output": str(output),
        "drawings": len(files),
        "render_failed": failed,
        "with_text": with_text,
        "classes": dict(sorted(labels.items())),
    }
