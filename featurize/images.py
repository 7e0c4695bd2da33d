"""Decode any supported image file into a fixed-size 8-bit RGB array, with bounded memory."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from featurize.errors import DataError

RESIZE_MODES = ("stretch", "pad")


class ImageError(DataError):
    """A file that cannot be turned into an image; ``str()`` is the reason (featurize skips and lists the file)."""


def _to_8bit_gray(im: Image.Image) -> Image.Image:
    # 16-bit and float scans rarely use their full range (12-bit MRI in a 16-bit PNG), so scale by the image's own max.
    arr = np.asarray(im, dtype=np.float32)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    scaled = np.zeros_like(arr) if hi <= lo else (arr - min(lo, 0.0)) * (255.0 / (hi - min(lo, 0.0)))
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _to_8bit_gray(im).convert("RGB")
    if mode == "P":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        # Transparent regions of a scan are background, which is black in MRI.
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im.convert("RGB")


def _fit(im: Image.Image, size: tuple[int, int], resize: str) -> Image.Image:
    w, h = size
    if resize == "stretch":
        return im.resize((w, h), Image.BILINEAR, reducing_gap=3.0)
    scale = min(w / im.width, h / im.height)
    nw, nh = max(1, round(im.width * scale)), max(1, round(im.height * scale))
    canvas = Image.new(im.mode, (w, h))
    canvas.paste(im.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0), ((w - nw) // 2, (h - nh) // 2))
    return canvas


def load_rgb(path: str | os.PathLike[str], size: tuple[int, int], resize: str = "stretch") -> np.ndarray:
    """Read ``path`` as uint8 RGB of ``size`` = (width, height). Raises ImageError with a reason."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}")
    if os.path.islink(path) and not os.path.exists(path):
        raise ImageError("dangling symlink")
    try:
        if os.path.getsize(path) == 0:
            raise ImageError("zero-byte file")
        # Pillow's own bomb check stays as it is (process-wide, so never changed here: the decode threads would
        # race on it): it warns above Image.MAX_IMAGE_PIXELS (89 Mpx by default) and refuses above twice that.
        with Image.open(path) as im:
            if im.format == "JPEG":
                # Decode huge JPEGs at a reduced scale: never hold a full-resolution copy.
                im.draft(im.mode if im.mode in ("L", "RGB") else None, (size[0] * 2, size[1] * 2))
            im.load()
            if im.mode == "L":
                # Every MRI slice: resize the one channel, then replicate it (same pixels, 1.8x faster).
                gray = np.asarray(_fit(im, size, resize), dtype=np.uint8)
                return np.stack([gray, gray, gray], axis=-1)
            rgb = _fit(_to_rgb(im), size, resize)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised content)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncation and bad headers as OSError/SyntaxError.
        raise ImageError(f"unreadable image ({exc})") from None
    return np.asarray(rgb, dtype=np.uint8)


def fit_gray(arr: np.ndarray, size: tuple[int, int], resize: str = "stretch") -> np.ndarray:
    """A 2-D uint8 slice (a volume's) as uint8 RGB of ``size`` = (width, height), resized as ``load_rgb`` resizes
    a grayscale file: the one channel first, then replicated, so a slice and its PNG give the same pixels."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}")
    gray = np.asarray(_fit(Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="L"), size, resize), dtype=np.uint8)
    return np.stack([gray, gray, gray], axis=-1)


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT`` (or a single number for a square) into (width, height)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"image size must look like 224x224 (width x height), not {text!r}") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 8:
        raise ValueError(f"image size must be WIDTHxHEIGHT with both >= 8, not {text!r}")
    return nums[0], nums[1]
