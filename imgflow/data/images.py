"""Image files in and out: probing headers, decoding to fixed-shape pixels, encoding arrays as PNG.

One place for the rules every reader of images follows, so training (the clean stage), batch
prediction and the sources that hold arrays rather than files all read and write images the same way.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from imgflow.config.stages import MAX_PIXELS  # [clean] max_pixels' default


@dataclass(frozen=True)
class Header:
    """What the header of an image says, before any pixel is decoded."""

    size: tuple[int, int]  # (height, width)
    mode: str

    def text(self) -> str:
        """``"HxW MODE"``: how a header travels compactly between processes and is counted."""
        return f"{self.size[0]}x{self.size[1]} {self.mode}"

    @classmethod
    def from_text(cls, text: str) -> Header:
        size, mode = text.split(" ", 1)
        height, width = size.split("x")
        return cls((int(height), int(width)), mode)


class BadImage(Exception):
    """An image that cannot be used, with a quarantine ``reason`` and a ``detail`` for a person."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


GRAYSCALE_MODES = ("1", "L", "I", "I;16", "F")
# imgflow checks every header against its caller's limit itself (``_opened``), so Pillow's global
# limit, which would refuse (or only warn about) a different number of pixels, is off.
Image.MAX_IMAGE_PIXELS = None


@contextmanager
def _opened(data: bytes, max_pixels: int, truncation: bool = False) -> Iterator[Image.Image]:
    """The image in ``data``, its header checked against ``max_pixels``. Whatever the decoder raises
    for these bytes, opening it or in the ``with`` block, becomes a ``BadImage``: one record's bytes
    never stop a run (a decoder has many ways to fail on hostile input: ``OSError``, ``ValueError``,
    ``struct.error``, ``IndexError``, ...). ``truncation``: name a failure that says so ``truncated``
    (decoding all pixels finds that; a header read does not), else ``undecodable``."""
    if not data:
        raise BadImage("empty", "zero bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            height, width = image.height, image.width
            if height < 1 or width < 1:
                raise BadImage("undecodable", f"the header declares {width}x{height} pixels: no area")
            if height * width > max_pixels:
                raise BadImage(
                    "too_large", f"the header declares {width}x{height} = {width * height:,} pixels, over max_pixels = {max_pixels:,}"
                )
            yield image
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not_an_image", "not a recognised image format") from None
    except Exception as exc:  # noqa: BLE001 - the decoder's failure on these bytes: a quarantine reason, with its words
        message = str(exc) or type(exc).__name__
        reason = "truncated" if truncation and "truncated" in message.lower() else "undecodable"
        raise BadImage(
            reason, message if isinstance(exc, (OSError, ValueError, SyntaxError)) else f"{type(exc).__name__}: {message}"
        ) from None


def read_header(data: bytes, max_pixels: int = MAX_PIXELS) -> Header:
    """Size and mode from the header; ``BadImage`` for empty files, files that are not images and
    headers declaring no area or over ``max_pixels`` pixels."""
    with _opened(data, max_pixels) as image:
        return Header(size=(image.height, image.width), mode=image.mode)


def decode(data: bytes, size: tuple[int, int], channels: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Fully decode an image to uint8 (height, width, channels); ``BadImage`` if any part is broken."""
    with _opened(data, max_pixels, truncation=True) as image:
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
    return array.reshape(size[0], size[1], channels)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W) or (H, W, 1|3|4) array."""
    array = np.asarray(pixels, dtype=np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
