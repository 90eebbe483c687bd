"""DICOM X-rays -> an 8-bit PIL image, displayed the way the file asks to be displayed.

Order of operations (DICOM PS3.4 N.2): stored values -> Modality LUT (RescaleSlope and
RescaleIntercept, or a Modality LUT Sequence) -> VOI LUT (a VOI LUT Sequence, else Window
Center/Width) -> 0..255 -> inverted for MONOCHROME1 (where 0 is white). Without a VOI LUT or
window, the image's own min..max range is stretched to 0..255, as viewers do by default.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ImageReadError
from .guards import check_dimensions
from .intensity import scale_to_uint8, stretch_to_uint8

DICOM_EXTENSIONS = (".dcm", ".dicom")
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_DEFER_SIZE = 1 << 20  # pixel data over 1 MiB stays on disk until the header checks pass


def is_dicom(path: str | Path) -> bool:
    """A ``.dcm``/``.dicom`` name, or the ``DICM`` marker after the 128-byte preamble."""
    return Path(path).suffix.lower() in DICOM_EXTENSIONS or _has_marker(path)


def read_dicom(source, name: str | None = None) -> Image.Image:
    """A single-frame DICOM image as a PIL image (mode ``L``, or ``RGB`` for colour files).

    ``source``: a path or a binary file object (an upload held in memory); ``name`` is how
    errors name it (default: the path).
    """
    path = name or str(source)  # only ever used to name the image in errors
    ds = _read_header(source, path)
    _check_header(path, ds)
    arr = _decode_pixels(path, ds)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric in _COLOUR:
        # pydicom converts YBR to RGB; the colour check downstream flags the image.
        return Image.fromarray(scale_to_uint8(arr, 0.0, float(2 ** int(ds.get("BitsStored", 8)) - 1)), "RGB")
    try:
        gray = _display_gray(arr, ds)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise ImageReadError(path, f"invalid DICOM display settings (Modality/VOI LUT or window): {exc}") from None
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return Image.fromarray(gray, "L")


def _read_header(source, path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    has_marker = _has_marker(source)
    try:
        # force=True only for .dcm files written without the preamble (allowed by old software).
        ds = pydicom.dcmread(source, defer_size=_DEFER_SIZE, force=not has_marker)
    except InvalidDicomError as exc:
        raise ImageReadError(path, f"not a readable DICOM file ({exc})") from None
    except Exception as exc:  # a malformed file can make the parser raise anything
        raise ImageReadError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if not has_marker and "PixelData" not in ds and "Rows" not in ds:
        # A forced read parses any bytes into something; without the marker or image elements, it is not DICOM.
        raise ImageReadError(path, "not a readable DICOM file (no DICM marker and no image elements)")
    return ds


def _has_marker(source) -> bool:
    if hasattr(source, "read"):
        start = source.tell()
        head = source.read(132)
        source.seek(start)
        return head[128:132] == b"DICM"
    try:
        with open(source, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _check_header(path, ds) -> None:
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data (no PixelData element)")
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError(path, "DICOM header lacks Rows or Columns")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(
            path, f"multi-frame DICOM ({frames} frames) is not supported: save the frontal view as a single-frame file"
        )
    check_dimensions(path, int(ds.Columns), int(ds.Rows))
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in _MONOCHROME + _COLOUR:
        raise ImageReadError(
            path, f"DICOM photometric interpretation {photometric or '(missing)'} is not supported "
                  "(MONOCHROME1, MONOCHROME2, RGB or YBR expected)"
        )
    _check_decoder(path, ds)


def _check_decoder(path, ds) -> None:
    """Refuse, with the fix, a compressed transfer syntax that no installed plugin decodes."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import ImplicitVRLittleEndian

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) or ImplicitVRLittleEndian
    if not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageReadError(path, f"DICOM transfer syntax {syntax.name} ({syntax}) is not supported") from None
    if not decoder.is_available:
        plugins = "; ".join(decoder.missing_dependencies)
        raise ImageReadError(
            path, f"compressed DICOM transfer syntax {syntax.name} ({syntax}) cannot be decoded: install a pydicom "
                  f"decoder plugin such as pylibjpeg ({plugins})"
        )


def _decode_pixels(path, ds) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoders and plugins raise many types on damaged data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        where = f" ({syntax.name})" if syntax else ""
        message = " ".join(str(exc).split())  # plugin errors span several lines
        raise ImageReadError(path, f"cannot decode DICOM pixel data{where}: {message}") from None
    expected = 3 if str(ds.get("PhotometricInterpretation", "")).upper() in _COLOUR else 2
    if arr.ndim != expected:
        raise ImageReadError(path, f"unexpected DICOM pixel array shape {arr.shape}")
    return arr


def _display_gray(arr: np.ndarray, ds) -> np.ndarray:
    """Stored values -> modality values -> VOI (LUT or window) -> uint8, 0 = black."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

    values = apply_modality_lut(arr, ds)
    if _has_voi_lut_sequence(ds):
        # A LUT is indexed by integer input values; rescaled values arrive as float.
        values = np.round(values).astype(np.int64)
        lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
        return scale_to_uint8(apply_voi_lut(values, ds), float(lut.min()), float(lut.max()))
    if "WindowCenter" in ds and "WindowWidth" in ds:
        # The window's output range is what the darkest and brightest inputs map to.
        low, high = apply_windowing(np.array([-np.inf, np.inf]), ds)
        return scale_to_uint8(apply_voi_lut(values, ds), float(low), float(high))
    return stretch_to_uint8(values)


def _has_voi_lut_sequence(ds) -> bool:
    # The same test pydicom's apply_voi_lut uses to prefer the LUT over the window.
    seq = ds.get("VOILUTSequence")
    return bool(seq) and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None

