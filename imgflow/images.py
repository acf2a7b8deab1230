"""Image files in and out: probing headers, decoding to fixed-shape pixels, encoding arrays as PNG.

One place for the rules every reader of images follows, so training (the clean stage), batch
prediction and the sources that hold arrays rather than files all read and write images the same way.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True)
class Probe:
    """What the header of an image says, before any pixel is decoded."""

    size: tuple[int, int]  # (height, width)
    mode: str


class BadImage(Exception):
    """An image that cannot be used, with a quarantine ``reason`` and a ``detail`` for a person."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


GRAYSCALE_MODES = ("1", "L", "I", "I;16", "F")


def probe(data: bytes) -> Probe:
    """Size and mode from the header; ``BadImage`` for empty files and files that are not images."""
    if not data:
        raise BadImage("empty", "zero bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return Probe(size=(image.height, image.width), mode=image.mode)
    except UnidentifiedImageError:
        raise BadImage("not_an_image", "not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage("undecodable", str(exc) or type(exc).__name__) from None


def decode(data: bytes, size: tuple[int, int], channels: int) -> np.ndarray:
    """Fully decode an image to uint8 (height, width, channels); ``BadImage`` if any part is broken."""
    if not data:
        raise BadImage("empty", "zero bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode in ("P", "PA", "LA", "RGBA") and channels == 3:
                # Composite transparency onto white rather than letting RGB conversion make it black.
                rgba = image.convert("RGBA")
                converted = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                converted.alpha_composite(rgba)
                image = converted
            image = image.convert("L" if channels == 1 else "RGB")
            if (image.height, image.width) != size:
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError:
        raise BadImage("not_an_image", "not a recognised image format") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        message = str(exc) or type(exc).__name__
        reason = "truncated" if "truncated" in message.lower() else "undecodable"
        raise BadImage(reason, message) from None
    return array.reshape(size[0], size[1], channels)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W) or (H, W, 1|3|4) array."""
    array = np.asarray(pixels, dtype=np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
