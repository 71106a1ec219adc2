"""Image decoding and safety checks shared by ingest and prediction.

One decoding path (`_decode`) serves both `inspect_image` (prove a file is a whole, sane image) and
`load_greyscale` (turn it into the 8-bit grey array every model takes). Refusals raise `BadImage`
with a short snake_case `reason` that ingest writes to its quarantine list.
"""

from __future__ import annotations

import errno
import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr.core import faults
from cxr.core.atomic_files import sha256_file
from cxr.data.scanning import real_path

DEFAULT_MAX_PIXELS = 60_000_000
# Images with a shorter side are refused (`too_small`) unless a run sets its own minimum.
MIN_IMAGE_SIDE = 64
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
# Failures that depend only on a file's bytes, so a check of unchanged bytes can be reused.
CONTENT_FAILURES = frozenset(
    {"empty_file", "not_an_image", "truncated", "decompression_bomb", "corrupt_dicom"}
)
# Errors Pillow raises while decoding damaged data (zlib/struct surface from PNG and TIFF plugins).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)
# Read errors a retry can cure (network storage hiccups): raised so the task retries, never quarantined.
TRANSIENT_ERRNOS = frozenset(
    {errno.EIO, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE, errno.EBUSY}
)
# A name the file system refuses to open: the only files quarantined for their name.
_NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EILSEQ})


class BadImage(Exception):
    """A file that must not be used as an image; `reason` is a short snake_case code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    """Header facts of a decoded image, at its native (not draft) size."""

    width: int
    height: int
    mode: str
    format: str


@dataclass(frozen=True)
class FileCheck:
    """Outcome of checking one file: its digest and header facts, or why it was refused."""

    path: str
    sha256: str | None = None
    info: ImageInfo | None = None
    reason: str | None = None
    detail: str = ""


def check_min_side(info: ImageInfo, min_side: int) -> None:
    """Refuse images whose shorter side is below `min_side` pixels."""
    if min(info.width, info.height) < min_side:
        raise BadImage("too_small", f"{info.width}x{info.height} is below the minimum side of {min_side} px")


def inspect_image(path: Path, *, min_side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Fully decode `path` to prove it is a whole image, and return its header facts.

    Large JPEGs are decoded at 1/8 scale: every entropy-coded block is still read, so truncation
    and corruption are still detected, at a fraction of the cost.
    """
    info, _ = _decode(Path(path), draft_side=1, max_pixels=max_pixels)
    check_min_side(info, min_side)
    return info


def load_greyscale(
    path: Path, size: int | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 0
) -> np.ndarray:
    """The image as uint8 grey, stretched to (size, size) (no aspect kept, like flow_from_directory).

    `size=None` keeps the native size. JPEGs much larger than `size` are decoded at reduced scale. An image
    whose shorter side is below `min_side` is refused (`too_small`).
    """
    info, decoded = _decode(Path(path), draft_side=size, max_pixels=max_pixels)
    check_min_side(info, min_side)
    return _grey_at_size(decoded, size)


def decode_greyscale(
    data: bytes, size: int | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 0
) -> np.ndarray:
    """`load_greyscale` for an encoded image held in memory (an upload); DICOM is told by its preamble."""
    if not data:
        raise BadImage("empty_file", "no bytes")
    handle = io.BytesIO(data)
    if data[128:132] == b"DICM":
        info, decoded = _decode_dicom(handle, max_pixels=max_pixels)
    else:
        info, decoded = _decode_raster(handle, draft_side=size, max_pixels=max_pixels)
    check_min_side(info, min_side)
    return _grey_at_size(decoded, size)


def _grey_at_size(decoded: Image.Image, size: int | None) -> np.ndarray:
    image = _to_grey(decoded)
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def check_file(path: str) -> FileCheck:
    """Decode and hash one file for ingest; never raises for bad input."""
    try:
        info = inspect_image(Path(path), min_side=0)
        return FileCheck(path=path, sha256=sha256_file(real_path(path)), info=info)
    except BadImage as error:
        return FileCheck(path=path, reason=error.reason, detail=error.detail)
    except OSError as error:
        if error.errno in TRANSIENT_ERRNOS:
            raise
        return FileCheck(path=path, reason="unreadable", detail=str(error))


def check_files(paths: list[str]) -> list[FileCheck]:
    """`check_file` over a chunk of paths (the unit of work sent to a worker process)."""
    return [check_file(path) for path in paths]


def _decode(path: Path, *, draft_side: int | None, max_pixels: int) -> tuple[ImageInfo, Image.Image]:
    """Open, size-check and fully decode one file (`path` is a `path_text`) into a loaded Pillow image."""
    try:
        faults.fail_first("read_image")
        faults.hang("read_image")
        handle = open(real_path(str(path)), "rb")  # noqa: SIM115 - closed below; one handle sniffs and decodes
    except OSError as error:
        if error.errno in TRANSIENT_ERRNOS:
            raise OSError(
                error.errno, f"cannot read {path} (transient error, worth a retry): {error.strerror}"
            ) from error
        if error.errno in _NAME_ERRNOS:
            raise BadImage(
                "bad_filename", f"the file system cannot open this name: {error.strerror}"
            ) from error
        raise BadImage("unreadable", f"{type(error).__name__}: {error.strerror or error}") from error
    with handle:
        try:
            head = handle.read(132)
        except OSError as error:
            if error.errno in TRANSIENT_ERRNOS:
                raise
            raise BadImage("unreadable", str(error)) from error
        if not head:
            raise BadImage("empty_file", "file has 0 bytes")
        handle.seek(0)
        if head[128:132] == b"DICM" or path.suffix.lower() in DICOM_SUFFIXES:
            return _decode_dicom(handle, max_pixels=max_pixels)
        return _decode_raster(handle, draft_side=draft_side, max_pixels=max_pixels)


def _decode_raster(
    handle: BinaryIO, *, draft_side: int | None, max_pixels: int
) -> tuple[ImageInfo, Image.Image]:
    with warnings.catch_warnings():
        # We apply our own, stricter pixel limit below, from the header alone.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(handle)
        except Image.DecompressionBombError as error:
            raise BadImage("decompression_bomb", str(error)) from error
        except UnidentifiedImageError as error:
            raise BadImage("not_an_image", "not a recognised image format") from error
        except _DECODE_ERRORS as error:
            raise BadImage("truncated", f"header unreadable: {error}") from error
        width, height = image.size
        info = ImageInfo(width=width, height=height, mode=image.mode, format=image.format or "unknown")
        if width * height > max_pixels:
            raise BadImage("decompression_bomb", f"{width}x{height} exceeds {max_pixels} pixels")
        if image.format == "JPEG" and draft_side is not None:
            image.draft(image.mode, (draft_side, draft_side))
        try:
            image.load()
        except Image.DecompressionBombError as error:
            raise BadImage("decompression_bomb", str(error)) from error
        except _DECODE_ERRORS as error:
            raise BadImage("truncated", f"decoding failed: {error}") from error
    return info, image


def _to_grey(image: Image.Image) -> Image.Image:
    """8-bit grey from any Pillow mode; high-bit-depth data is stretched over its own range."""
    if image.mode == "L":
        return image
    if image.mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        return Image.fromarray(_scale_to_uint8(np.asarray(image)))
    if image.mode in {"P", "PA"}:
        image = image.convert("RGBA")
    return image.convert("L")


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Linearly map the array's min..max onto 0..255 (a flat image becomes all zeros)."""
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _decode_dicom(handle: BinaryIO, *, max_pixels: int) -> tuple[ImageInfo, Image.Image]:
    """First frame of a DICOM file, with modality rescale, VOI window and MONOCHROME1 inverted."""
    import pydicom  # imported here: only DICOM input pays for it
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(handle)
        width, height = int(dataset.Columns), int(dataset.Rows)
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    except Exception as error:  # pydicom raises many types for malformed files
        raise BadImage("corrupt_dicom", f"{type(error).__name__}: {error}") from error
    info = ImageInfo(width=width, height=height, mode=photometric, format="DICOM")
    if width * height > max_pixels:
        raise BadImage("decompression_bomb", f"{width}x{height} exceeds {max_pixels} pixels")
    try:
        dataset.pixel_array_options(index=0)
        pixels = dataset.pixel_array
        if photometric.startswith("MONOCHROME"):
            pixels = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset)
    except Exception as error:
        raise BadImage("corrupt_dicom", f"pixel data unreadable: {type(error).__name__}: {error}") from error
    if pixels.ndim == 3:  # colour (rows, columns, samples): luma, as Pillow would
        pixels = pixels[..., :3] @ np.array([0.299, 0.587, 0.114])
    grey = _scale_to_uint8(pixels)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return info, Image.fromarray(grey)
