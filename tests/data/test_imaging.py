"""Decoding and safety checks: every refusal reason, every supported format, draft decoding."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from cxr.data.imaging import BadImage, check_file, inspect_image, load_greyscale, sha256_file
from tests.helpers.image_files import png_declaring, write_dicom

# A 40x48 grey ramp using the whole 0..255 range, so range-scaling leaves it unchanged.
GREY = np.linspace(0, 255, 40 * 48).round().astype(np.uint8).reshape(40, 48)


def write_noise_jpeg(path: Path, *, width: int = 48, height: int = 40, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return path


@pytest.fixture
def no_pixel_loading(monkeypatch):
    """Fail the test if anything tries to decode pixels (proves a refusal came from the header)."""

    def refuse(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def reason_of(path: Path, **kwargs) -> str:
    with pytest.raises(BadImage) as caught:
        inspect_image(path, min_side=kwargs.pop("min_side", 8), **kwargs)
    return caught.value.reason


def test_valid_jpeg_reports_header_facts(tmp_path):
    info = inspect_image(write_noise_jpeg(tmp_path / "ok.jpeg", width=64, height=50), min_side=32)
    assert (info.width, info.height, info.mode, info.format) == (64, 50, "L", "JPEG")


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpeg").touch()
    assert reason_of(tmp_path / "empty.jpeg") == "empty_file"


def test_html_saved_as_jpeg_is_not_an_image(tmp_path):
    (tmp_path / "page.jpeg").write_text("<html><body>403 Forbidden</body></html>")
    assert reason_of(tmp_path / "page.jpeg") == "not_an_image"


@pytest.mark.parametrize("keep", [0.2, 0.6, 0.97])
def test_truncated_jpeg(tmp_path, keep):
    data = write_noise_jpeg(tmp_path / "full.jpeg", width=256, height=256).read_bytes()
    (tmp_path / "cut.jpeg").write_bytes(data[: int(len(data) * keep)])
    assert reason_of(tmp_path / "cut.jpeg") == "truncated"


def test_truncated_png(tmp_path):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert reason_of(tmp_path / "cut.png") == "truncated"


def test_too_small(tmp_path):
    path = write_noise_jpeg(tmp_path / "tiny.jpeg", width=20, height=60)
    assert reason_of(path, min_side=32) == "too_small"
    assert inspect_image(path, min_side=20).width == 20


@pytest.mark.parametrize(("width", "height"), [(50_000, 50_000), (10_000, 7_000)])
def test_decompression_bomb_refused_from_header(tmp_path, no_pixel_loading, width, height):
    # 50000^2 trips Pillow's own hard limit in open(); 70 MP only our stricter 60 MP limit.
    assert reason_of(png_declaring(tmp_path / "bomb.png", width, height)) == "decompression_bomb"


def test_max_pixels_is_configurable(tmp_path):
    path = write_noise_jpeg(tmp_path / "ok.jpeg", width=64, height=64)
    assert reason_of(path, max_pixels=64 * 63) == "decompression_bomb"


def test_unreadable_file(tmp_path, monkeypatch):
    path = write_noise_jpeg(tmp_path / "secret.jpeg")
    path.chmod(0)
    if os.geteuid() == 0:  # root ignores file modes: simulate the denial
        real_open = builtins.open

        def denying_open(file, *args, **kwargs):
            if Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", denying_open)
    assert reason_of(path) == "unreadable"
    assert check_file(str(path)).reason == "unreadable"


def test_corrupt_dicom(tmp_path):
    (tmp_path / "noise.dcm").write_bytes(os.urandom(512))
    assert reason_of(tmp_path / "noise.dcm") == "corrupt_dicom"
    whole = write_dicom(tmp_path / "whole.dcm", np.zeros((32, 32))).read_bytes()
    (tmp_path / "short.dcm").write_bytes(whole[:-600])  # pixel data cut short
    assert reason_of(tmp_path / "short.dcm") == "corrupt_dicom"


def test_dicom_bomb_refused_before_pixels(tmp_path):
    path = write_dicom(tmp_path / "big.dcm", np.zeros((16, 16)))
    assert reason_of(path, max_pixels=100) == "decompression_bomb"


def _palette_image() -> Image.Image:
    image = Image.frombytes("P", (48, 40), GREY.tobytes())
    image.putpalette([level for index in range(256) for level in (index, index, index)])
    return image


def _save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


# name -> (writer, expected mode, largest allowed mean absolute error against GREY)
FORMATS = {
    "png16": (
        lambda p: _save(Image.fromarray(GREY.astype(np.uint16) * 200 + 1000), p / "a.png"),
        "I;16",
        0.0,
    ),
    "palette": (lambda p: _save(_palette_image(), p / "a.png"), "P", 0.0),
    "rgba": (
        lambda p: _save(Image.fromarray(np.dstack([GREY, GREY, GREY, np.full_like(GREY, 128)])), p / "a.png"),
        "RGBA",
        0.0,
    ),
    "cmyk_jpeg": (
        lambda p: _save(Image.fromarray(GREY).convert("CMYK"), p / "a.jpeg", quality=95),
        "CMYK",
        3.0,
    ),
    "rgb_jpeg": (
        lambda p: _save(Image.fromarray(np.dstack([GREY] * 3)), p / "a.jpg", quality=95),
        "RGB",
        3.0,
    ),
    "bmp": (lambda p: _save(Image.fromarray(np.dstack([GREY] * 3)), p / "a.bmp"), "RGB", 0.0),
    "tiff": (lambda p: _save(Image.fromarray(GREY), p / "a.tiff", compression="tiff_lzw"), "L", 0.0),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_formats_decode_to_grey_uint8(tmp_path, name):
    write, mode, tolerance = FORMATS[name]
    path = write(tmp_path)
    assert inspect_image(path, min_side=32).mode == mode
    grey = load_greyscale(path)
    assert grey.dtype == np.uint8 and grey.shape == GREY.shape
    assert np.abs(grey.astype(float) - GREY).mean() <= tolerance
    small = load_greyscale(path, 32)
    assert small.shape == (32, 32) and small.dtype == np.uint8


def test_dicom_monochrome1_with_rescale_and_window(tmp_path):
    raw = np.tile(np.arange(0, 1001, 10), (8, 1))  # 8 x 101, stored values 0..1000
    path = write_dicom(
        tmp_path / "x.dcm",
        raw,
        PhotometricInterpretation="MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-1000,  # -> -1000..1000
        WindowCenter=0,
        WindowWidth=1000,  # shows -500..500, i.e. stored 250..750
    )
    info = inspect_image(path, min_side=8)
    assert (info.width, info.height, info.format, info.mode) == (101, 8, "DICOM", "MONOCHROME1")
    grey = load_greyscale(path)[0].astype(int)
    assert (grey[raw[0] <= 240] == 255).all() and (grey[raw[0] >= 760] == 0).all()  # inverted, clipped
    # stored 600 -> 200 after rescale -> 70 % up the window -> inverted to about 30 % of 255.
    assert abs(grey[60] - 0.3 * 255) <= 3
    assert (np.diff(grey) <= 0).all()


def test_dicom_multiframe_uses_first_frame(tmp_path):
    frames = np.stack([np.tile(np.arange(16), (16, 1)), np.zeros((16, 16))]) * 100
    grey = load_greyscale(write_dicom(tmp_path / "multi.dcm", frames))
    assert grey[0, 0] == 0 and grey[0, -1] == 255


def test_large_jpeg_is_decoded_in_draft_mode(tmp_path, monkeypatch):
    path = write_noise_jpeg(tmp_path / "big.jpeg", width=1600, height=1200)
    drafts = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = real_draft(self, mode, size)
        drafts.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    info = inspect_image(path, min_side=64)
    assert (info.width, info.height) == (1600, 1200)  # native size reported
    assert drafts[-1] == (200, 150)  # but decoded at 1/8
    assert load_greyscale(path, 300).shape == (300, 300)
    assert drafts[-1] == (400, 300)  # 1/4: the smallest scale still >= 300 px


def test_sha256_file_matches_hashlib(tmp_path):
    import hashlib

    data = os.urandom(3_000_000)
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_check_file_never_raises_for_bad_input(tmp_path):
    (tmp_path / "x.jpeg").write_text("hello")
    check = check_file(str(tmp_path / "x.jpeg"))
    assert (check.reason, check.sha256, check.info) == ("not_an_image", None, None)
    good = check_file(str(write_noise_jpeg(tmp_path / "good.jpeg")))
    assert good.reason is None and good.sha256 == sha256_file(tmp_path / "good.jpeg")
