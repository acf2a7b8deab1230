"""The clip-art recipe on an SVG tree the test makes (the openclipart-svg package is not needed)."""

import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from imgflow.data.recipes import clipart

SVG = """<svg xmlns="http://www.w3.org/2000/svg" xmlns:cc="http://web.resource.org/cc/"
 xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" width="40" height="20">
<metadata><rdf:RDF><cc:Work rdf:about=""><dc:title>{title}</dc:title><dc:description>{description}</dc:description>
<dc:subject><rdf:Bag><rdf:li>animals</rdf:li></rdf:Bag></dc:subject>
<dc:publisher><cc:Agent><dc:title>Open Clip Art Library</dc:title></cc:Agent></dc:publisher></cc:Work></rdf:RDF></metadata>
<rect width="40" height="20" fill="{color}"/></svg>"""


def _tree(root: Path) -> Path:
    (root / "animals" / "birds").mkdir(parents=True)
    (root / "food").mkdir()
    (root / "animals" / "birds" / "owl.svg").write_text(SVG.format(title="Night owl", description="", color="#553311"))
    (root / "food" / "apple.svg").write_text(SVG.format(title="Red apple", description="A shiny fruit", color="red"))
    (root / "food" / "broken.svg").write_text("<svg this is not xml")
    os.symlink(root / "food" / "apple.svg", root / "animals" / "apple.svg")  # a repeat under a second folder
    return root


def test_drawings_are_every_svg_once_and_text_is_title_and_description(tmp_path: Path) -> None:
    root = _tree(tmp_path / "svg")
    assert [p.relative_to(root).as_posix() for p in clipart.drawings(root)] == ["animals/birds/owl.svg", "food/apple.svg", "food/broken.svg"]
    assert clipart.metadata_text(root / "food" / "apple.svg") == "Red apple. A shiny fruit"  # not the keyword, not the publisher
    assert clipart.metadata_text(root / "animals" / "birds" / "owl.svg") == "Night owl"
    assert clipart.metadata_text(root / "food" / "broken.svg") == ""


@pytest.mark.skipif(shutil.which("rsvg-convert") is None, reason="needs rsvg-convert (apt-get install librsvg2-bin)")
def test_build_renders_a_table_of_image_text_and_label(tmp_path: Path) -> None:
    from imgflow.data.images import decode

    root = _tree(tmp_path / "svg")
    summary = clipart.build(tmp_path / "out" / "clipart.parquet", svg_root=root, size=32)
    assert summary == {"output": str(tmp_path / "out" / "clipart.parquet"), "drawings": 3, "render_failed": 1, "with_text": 2,
                       "classes": {"animals": 1, "food": 2}}
    rows = pq.read_table(tmp_path / "out" / "clipart.parquet").to_pylist()
    assert [(r["id"], r["label"], r["text"]) for r in rows] == [
        ("animals/birds/owl.svg", "animals", "Night owl"), ("food/apple.svg", "food", "Red apple. A shiny fruit"), ("food/broken.svg", "food", ""),
    ]
    apple = decode(rows[1]["image"], (32, 32), 3)
    assert tuple(apple[16, 16]) == (255, 0, 0) and tuple(apple[2, 16]) == (255, 255, 255)  # 40x20 fits in 32x32, centred on white
    assert rows[2]["image"] == b""  # failed to render: kept, for cleaning to quarantine as empty
    assert not list((tmp_path / "out").glob(".*"))


def test_missing_packages_are_named_with_the_command_that_installs_them(tmp_path: Path) -> None:
    from imgflow.runtime.errors import SourceError

    with pytest.raises(SourceError, match="needs Debian's openclipart-svg.*apt-get install -y --no-install-recommends openclipart-svg"):
        clipart.ensure_installed(tmp_path / "nowhere", install=False)
