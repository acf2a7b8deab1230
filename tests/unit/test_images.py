"""Probing, decoding and encoding images: the rules training and prediction share."""

from __future__ import annotations

import numpy as np
import pytest

from imgflow.data.images import BadImage, decode, encode_png, read_header
from tests.conftest import claimed_png, digit_like, encode


def test_decode_resizes_and_converts() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    assert decode(encode(rgb), (10, 12), 1).shape == (10, 12, 1)
    assert decode(encode(rgb, "JPEG"), (30, 20), 3).shape == (30, 20, 3)


def test_decode_and_probe_name_what_is_wrong() -> None:
    png = encode(digit_like(1))
    cases = [(b"", "empty"), (b"plain text", "not_an_image"), (png[: len(png) // 2], "truncated")]
    for data, reason in cases:
        with pytest.raises(BadImage) as bad:
            decode(data, (16, 16), 1)
        assert bad.value.reason == reason and bad.value.detail
    assert read_header(png).size == (16, 16) and read_header(png).mode == "L"
    with pytest.raises(BadImage, match="empty: zero bytes"):
        read_header(b"")


def test_png_round_trip_keeps_every_pixel() -> None:
    gray, rgb = digit_like(3), np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    assert np.array_equal(decode(encode_png(gray[..., None]), (16, 16), 1)[..., 0], gray)
    assert np.array_equal(decode(encode_png(rgb), (9, 7), 3), rgb)


def test_a_header_claiming_too_many_pixels_is_too_large_before_any_decoding() -> None:
    bomb = claimed_png(100_000, 100_000)  # 10 gigapixels claimed in about 100 bytes
    for read in (read_header, lambda data: decode(data, (8, 8), 1)):
        with pytest.raises(BadImage) as bad:
            read(bomb)
        assert bad.value.reason == "too_large" and "100000x100000" in bad.value.detail and "max_pixels" in bad.value.detail
    small = encode(digit_like(1))  # 16 x 16 = 256 pixels: the limit is the caller's
    assert read_header(small, max_pixels=256).size == (16, 16)
    with pytest.raises(BadImage, match="too_large: .*over max_pixels = 255"):
        decode(small, (16, 16), 1, max_pixels=255)


def test_any_decoder_failure_is_a_bad_image() -> None:
    # A GIF whose header promises a palette and pixels that are not there, and bytes that are only a
    # PNG signature: whatever Pillow raises for them becomes a reason, never an exception of its own.
    for data in (b"GIF89a\x10\x00\x10\x00\xf7\x00\x00", b"\x89PNG\r\n\x1a\n", claimed_png(4, 4)[:40]):
        with pytest.raises(BadImage) as bad:
            decode(data, (4, 4), 1)
        assert bad.value.reason in ("not_an_image", "undecodable", "truncated") and bad.value.detail
