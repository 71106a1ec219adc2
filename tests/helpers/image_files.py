"""Image files built inside tests (nothing is committed)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's signature)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def write_dicom(path: Path, frames: np.ndarray, **attributes) -> Path:
    """A minimal uncompressed DICOM file holding uint16 `frames` (rows, cols) or (n, rows, cols)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = frames.shape[-2:]
    if frames.ndim == 3:
        dataset.NumberOfFrames = frames.shape[0]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    for name, value in attributes.items():
        setattr(dataset, name, value)
    dataset.PixelData = frames.astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path
