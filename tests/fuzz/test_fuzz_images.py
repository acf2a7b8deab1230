"""Fuzz: random and mutated bytes as image files, through probe/decode and through a whole folder
source (download and clean). Each becomes a kept record or a quarantined one with a reason, never an
exception."""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from imgflow.config import CleanConfig, DownloadConfig
from imgflow.data.images import BadImage, decode, read_header
from imgflow.stages.clean import CLEAN
from imgflow.stages.download import DOWNLOAD
from imgflow.store.artifacts import ArtifactStore
from tests.conftest import claimed_png, digit_like, encode
from tests.fuzz.conftest import fuzz_target

REASONS = {"empty", "not_an_image", "truncated", "undecodable", "too_large"}
CLEAN_REASONS = REASONS | {"unlabeled", "unknown_label", "duplicate", "label_conflict"}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow on corrupt metadata: expected here
LIMIT = 1 << 22  # max_pixels for the fuzzed files: a declared 4-megapixel image still decodes quickly


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _seeds() -> list[bytes]:
    """Valid files of many formats and modes: what the mutations start from."""
    gray = Image.fromarray(digit_like(1, size=12))
    rgb = Image.fromarray(np.random.default_rng(2).integers(0, 256, (10, 14, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotated 90 degrees
    frames = [Image.fromarray(digit_like(seed, size=8)).convert("P") for seed in range(3)]
    return [
        encode(digit_like(0)), _save(rgb, "PNG"), _save(rgb.convert("RGBA"), "PNG"), _save(rgb.convert("P"), "PNG"),
        _save(Image.fromarray(np.arange(96, dtype=np.uint16).reshape(8, 12) * 600), "PNG"),  # 16-bit
        _save(gray.convert("1"), "PNG"), _save(rgb, "JPEG"), _save(gray, "JPEG"), _save(rgb.convert("CMYK"), "JPEG"),
        _save(rgb, "JPEG", exif=exif.tobytes()), _save(rgb, "JPEG", progressive=True),
        _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),  # animated
        _save(rgb, "BMP"), _save(gray, "TIFF"), _save(rgb, "TIFF", compression="tiff_deflate"), _save(rgb, "WEBP"),
        _save(rgb.convert("RGBA"), "WEBP", lossless=True), _save(rgb, "PPM"), _save(rgb, "TGA"), _save(rgb, "ICO"),
        claimed_png(0, 7), claimed_png(3, 3), claimed_png(100_000, 100_000),
    ]


SEEDS = _seeds()
MAGICS = [seed[:8] for seed in SEEDS]


def _with_dimensions(data: bytes, width: int, height: int) -> bytes:
    """A PNG's header rewritten to claim ``width`` x ``height`` (checksum fixed, so it still parses);
    other formats unchanged."""
    if not data.startswith(b"\x89PNG") or len(data) < 33:
        return data
    header = struct.pack(">II", width, height) + data[24:29]
    return data[:16] + header + struct.pack(">I", zlib.crc32(b"IHDR" + header)) + data[33:]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "byte", "insert", "delete", "magic", "dimensions"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "magic":
            data[:8] = draw(st.sampled_from(MAGICS))
        elif kind == "dimensions":
            sizes = st.one_of(st.integers(0, 64), st.integers(0, 2**31 - 1), st.sampled_from([2**31 - 1, 65_535, 65_536]))
            data = bytearray(_with_dimensions(bytes(data), draw(sizes), draw(sizes)))
    return bytes(data)


image_files = st.one_of(st.binary(max_size=512), mutated(), mutated())


@fuzz_target(examples=600)
@given(data=image_files, channels=st.sampled_from([1, 3]))
def test_any_bytes_probe_and_decode_to_pixels_or_a_reason(data: bytes, channels: int) -> None:
    try:
        found = read_header(data, LIMIT)
    except BadImage as bad:
        assert bad.reason in REASONS and bad.detail
    else:
        assert found.size[0] >= 1 and found.size[1] >= 1 and found.size[0] * found.size[1] <= LIMIT
    try:
        pixels = decode(data, (8, 8), channels, LIMIT)
    except BadImage as bad:
        assert bad.reason in REASONS and bad.detail
    else:
        assert pixels.shape == (8, 8, channels) and pixels.dtype == np.uint8


@fuzz_target(examples=20)
@given(files=st.lists(image_files, min_size=1, max_size=4), classes=st.lists(st.sampled_from("ab"), min_size=4, max_size=4))
def test_a_folder_of_fuzzed_files_keeps_or_quarantines_every_one(files: list[bytes], classes: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "data"
        for number, seed in enumerate((1, 2, 3, 4)):  # two good images in each class
            (root / "ab"[number % 2]).mkdir(parents=True, exist_ok=True)
            (root / "ab"[number % 2] / f"good{number}.png").write_bytes(encode(digit_like(seed)))
        for number, data in enumerate(files):
            (root / classes[number] / f"fuzzed{number}.img").write_bytes(data)
        store = ArtifactStore(Path(folder) / "artifacts")
        raw = DOWNLOAD.run(store, DownloadConfig(source=f"folder:{root}"), {"source": "fuzz"})
        clean = CLEAN.run(store, CleanConfig(image_size=(8, 8), channels=1, max_pixels=LIMIT), {"raw": raw})
        info = clean.info
        assert info.records_in == len(files) + 4 == info.kept + info.quarantined
        quarantined = pq.read_table(clean.file("quarantine.parquet")).to_pylist()
        assert all(row["reason"] in CLEAN_REASONS and row["detail"] for row in quarantined)
        assert not any(row["id"].startswith("a/good") or row["id"].startswith("b/good") for row in quarantined)
