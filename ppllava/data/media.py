"""Images read as they are stored, into the one layout the vision tower takes: (H, W, 3) uint8 RGB.

Every image and every frame-folder frame goes through `read_image`, so the dataset, the CLIP pairs
and the frame reader agree on what a 16-bit, greyscale, palette or transparent picture looks like:

- 8-bit RGB: as stored.
- greyscale (L, 1-bit): the grey value in all three channels.
- 16-bit greyscale (I;16*): the high byte, `v >> 8`; that is what Pillow itself does with 16-bit
  colour PNGs, so a grey and a colour 16-bit picture of one scene read alike (and `v * 257 >> 8 == v`,
  so an 8-bit picture stored as 16-bit reads back exactly).
- palette (P): the palette's colours.
- with alpha (RGBA, LA, PA, palette with a transparent entry): alpha is dropped and the stored colour
  kept, as LLaVA's loaders (`Image.open(f).convert("RGB")`) give the released checkpoints.
- 32-bit integer or float pixels (I, F): refused, since no bit depth says how to scale them.
A file that is missing, cannot be decoded or has another mode is a MediaError naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np


class MediaError(ValueError):
    """A media file that is missing, unreadable or empty; the message names the file."""


SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
REFUSED = ("I", "F")


def read_image(path) -> np.ndarray:
    """The picture at `path` as (H, W, 3) uint8 RGB, by the rules in this module's docstring."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            image.load()
            return image_to_rgb(image, str(path))
    except MediaError:
        raise
    # UnidentifiedImageError and truncated files are OSErrors; some plugins raise SyntaxError or ValueError.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise MediaError(f"{path}: cannot decode the image ({type(err).__name__}: {str(err)[:200]})") from err


def image_to_rgb(image, where: str = "image") -> np.ndarray:
    """An opened PIL image as (H, W, 3) uint8 RGB, by the rules in this module's docstring (the
    processor takes PIL images this way too); `where` names it in the MediaError."""
    mode = image.mode
    if mode in REFUSED:
        raise MediaError(f"{where}: pixel mode {mode!r} (32-bit integer or float) has no bit depth to "
                         "scale it to 8 bits by; save it as 8- or 16-bit")
    if mode in SIXTEEN_BIT:
        grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)  # (H, W)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow's own route for a palette with transparency (it warns otherwise)
    # RGBA/LA/PA -> RGB drops alpha; L/1/P/CMYK/YCbCr -> RGB are Pillow's conversions.
    return np.array(image.convert("RGB"))  # a writable copy for the processors


def image_size(path) -> Tuple[int, int]:
    """(height, width) of an image from its header alone; MediaError naming the file if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError) as err:
        raise MediaError(f"{path}: cannot decode the image ({type(err).__name__}: {str(err)[:200]})") from err
    return height, width
