"""Probing, decoding and encoding images: the rules training and prediction share."""

from __future__ import annotations

import numpy as np
import pytest

from imgflow.images import BadImage, decode, encode_png, probe
from tests.conftest import digit_like, encode


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
    assert probe(png).size == (16, 16) and probe(png).mode == "L"
    with pytest.raises(BadImage, match="empty: zero bytes"):
        probe(b"")


def test_png_round_trip_keeps_every_pixel() -> None:
    gray, rgb = digit_like(3), np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    assert np.array_equal(decode(encode_png(gray[..., None]), (16, 16), 1)[..., 0], gray)
    assert np.array_equal(decode(encode_png(rgb), (9, 7), 3), rgb)
