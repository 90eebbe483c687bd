"""The one image loader on every supported input, its refusals and its warnings.

Every file here is made in tmp_path from real Kermany X-rays: re-encoded as PNG in several
modes, rotated behind an EXIF tag, or wrapped in DICOM by pydicom with the display settings
a scanner would write.
"""
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, JPEG2000Lossless,
                         JPEGLosslessSV1, generate_uid)

from pneumoscan.data.cache import load_collection
from pneumoscan.data.inputs import iter_inputs
from pneumoscan.data.sources import read_source
from pneumoscan.errors import ImageReadError
from pneumoscan.imaging.guards import MAX_PIXELS
from pneumoscan.imaging.loader import load_image, read_grayscale


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def xray_jpeg(kermany_dir) -> Path:
    return sorted((kermany_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[0]


@pytest.fixture(scope="module")
def gray(xray_jpeg) -> np.ndarray:
    """The real X-ray as the loader reads it: 2-D uint8."""
    return read_grayscale(xray_jpeg)


def stretch(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return np.round((values - values.min()) / (values.max() - values.min()) * 255).astype(np.uint8)


def read_gray(path) -> np.ndarray:
    return read_grayscale(path)


def write_dicom(path, pixels, photometric="MONOCHROME2", bits_stored=None, syntax=ExplicitVRLittleEndian, **tags):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    for key, value in tags.items():
        setattr(ds, key, value)
    if syntax != ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def write_compressed_dicom(path, gray, syntax, fragment: bytes):
    """A DICOM whose pixel data is one encapsulated fragment (real or damaged codestream)."""
    write_dicom(path, gray)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def refusal(path) -> str:
    """The ImageReadError message for ``path`` (it must name the file first)."""
    with pytest.raises(ImageReadError) as info:
        load_image(path, 64)
    assert str(info.value).startswith(str(path)), str(info.value)
    assert info.value.path == str(path)
    return info.value.problem


# ----------------------------------------------------------------------------- 8-bit contract
def test_8bit_jpeg_output_is_grayscale_then_squashed_bilinear(xray_jpeg):
    # The documented contract, recomputed with plain Pillow: 8-bit inputs did not change.
    expected = np.asarray(Image.open(xray_jpeg).convert("L").resize((64, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(load_image(xray_jpeg, 64).array, expected)
    np.testing.assert_array_equal(load_image(xray_jpeg, 64).array, expected)


# ----------------------------------------------------------------------------- PNG modes
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
def test_png_modes_decode_to_the_same_grayscale(tmp_path, gray, mode):
    if mode == "P":
        image = Image.fromarray(gray).convert("P")  # keeps the gray values as palette indices
        image.putpalette([v for i in range(256) for v in (i, i, i)])
    elif mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)  # the full 16-bit range, as PNG asks
    else:
        image = Image.fromarray(gray).convert(mode)
    path = tmp_path / f"xray_{mode.replace(';', '')}.png"
    image.save(path)
    assert Image.open(path).mode == mode
    np.testing.assert_array_equal(read_gray(path), gray)


def test_16bit_png_within_one_level_of_the_8bit_one(tmp_path, gray):
    # A true 16-bit image (not an exact multiple of 257) lands within one level of its 8-bit cut.
    rng = np.random.default_rng(0)
    deep = gray.astype(np.uint16) * 257 + rng.integers(0, 257, gray.shape).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert np.abs(read_gray(tmp_path / "deep.png").astype(int) - gray).max() <= 1


def test_16bit_png_with_raw_12bit_values_is_stretched(tmp_path, gray):
    # Detector values never scaled to 16 bits would be near black; their own range is used.
    Image.fromarray(gray.astype(np.uint16) * 16).save(tmp_path / "raw12.png")
    np.testing.assert_array_equal(read_gray(tmp_path / "raw12.png"), stretch(gray))


def test_transparent_pixels_become_black(tmp_path, gray):
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    rgba[:20, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    expected = gray.copy()
    expected[:20] = 0
    np.testing.assert_array_equal(read_gray(tmp_path / "alpha.png"), expected)


# ----------------------------------------------------------------------------- EXIF orientation
def rotated_with_exif(gray, path, fmt):
    """Stored turned 90 degrees counter-clockwise, with the EXIF tag saying to turn it back."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(gray).transpose(Image.Transpose.ROTATE_90).save(path, format=fmt, exif=exif, quality=95)
    return path


def test_exif_orientation_png_exact(tmp_path, gray):
    upright = gray[:, :180]  # not square, so a wrong orientation would also show in the size
    path = rotated_with_exif(upright, tmp_path / "turned.png", "PNG")
    assert Image.open(path).size == (upright.shape[0], upright.shape[1])  # stored sideways
    np.testing.assert_array_equal(read_gray(path), upright)
    assert load_image(path, 64).source_size == (upright.shape[1], upright.shape[0])


def test_exif_orientation_jpeg(tmp_path, gray):
    path = rotated_with_exif(gray, tmp_path / "turned.jpeg", "JPEG")
    Image.fromarray(gray).save(tmp_path / "upright.jpeg", quality=95)
    upright = load_image(tmp_path / "upright.jpeg", 64).array.astype(int)
    turned = load_image(path, 64).array.astype(int)
    assert np.abs(turned - upright).mean() < 2  # the same picture, up to JPEG re-encoding
    sideways = np.rot90(turned, 1)  # what ignoring the tag would give
    assert np.abs(sideways - upright).mean() > 20


# ----------------------------------------------------------------------------- DICOM
def test_dicom_monochrome2_and_monochrome1(tmp_path, gray):
    mono2 = read_gray(write_dicom(tmp_path / "mono2.dcm", gray))
    mono1 = read_gray(write_dicom(tmp_path / "mono1.dcm", gray, "MONOCHROME1"))
    np.testing.assert_array_equal(mono2, stretch(gray))  # no window: the image's own range
    np.testing.assert_array_equal(mono1, 255 - mono2)  # MONOCHROME1: 0 is white


def test_dicom_16bit_stored_values(tmp_path, gray):
    stored = gray.astype(np.uint16) * 16 + 7  # 12-bit detector values
    np.testing.assert_array_equal(read_gray(write_dicom(tmp_path / "d16.dcm", stored, bits_stored=12)), stretch(gray))


def test_dicom_rescale_then_window(tmp_path, gray):
    stored = gray.astype(np.uint16) * 4 + 1000  # RescaleSlope/Intercept map these back onto gray
    path = write_dicom(tmp_path / "window.dcm", stored, bits_stored=12, RescaleSlope=0.25, RescaleIntercept=-250,
                       WindowCenter=100, WindowWidth=101)
    # DICOM PS3.3 C.11.2.1.2.1, LINEAR window on the rescaled values, onto 0..255.
    expected = np.round(np.clip((gray - 99.5) / 100 + 0.5, 0, 1) * 255)
    np.testing.assert_array_equal(read_gray(path), expected)


def test_dicom_voi_lut_sequence(tmp_path, gray):
    stored = gray.astype(np.uint16) * 4 + 1000
    lut = np.round(4095 * (np.arange(256) / 255) ** 0.5).astype(np.uint16)  # a gamma curve, 12-bit out
    item = Dataset()
    item.LUTDescriptor = [256, 0, 12]
    item.add_new(0x00283006, "US", lut.tolist())  # LUTData
    path = write_dicom(tmp_path / "lut.dcm", stored, bits_stored=12, RescaleSlope=0.25, RescaleIntercept=-250,
                       VOILUTSequence=Sequence([item]), WindowCenter=10, WindowWidth=5)  # the LUT wins
    np.testing.assert_array_equal(read_gray(path), np.round(lut[gray] / 4095 * 255))


def test_dicom_found_by_its_preamble_without_extension(tmp_path, gray):
    path = write_dicom(tmp_path / "IM000001", gray)
    np.testing.assert_array_equal(read_gray(path), stretch(gray))


def test_dicom_jpeg2000_decodes_when_a_decoder_is_there(tmp_path, gray):
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="JPEG2000", irreversible=False, no_jp2=True)  # lossless
    path = write_compressed_dicom(tmp_path / "j2k.dcm", gray, JPEG2000Lossless, buffer.getvalue())
    np.testing.assert_array_equal(read_gray(path), stretch(gray))


def test_dicom_refusals_name_the_file_and_the_problem(tmp_path, gray):
    assert "multi-frame" in refusal(write_dicom(tmp_path / "multi.dcm", np.stack([gray, gray])))
    no_pixels = write_dicom(tmp_path / "nopixels.dcm", gray)
    ds = pydicom.dcmread(no_pixels)
    del ds.PixelData
    ds.save_as(no_pixels, enforce_file_format=True)
    assert "no pixel data" in refusal(no_pixels)

    problem = refusal(write_compressed_dicom(tmp_path / "lossless.dcm", gray, JPEGLosslessSV1, b"\xff\xd8\xff\xd9"))
    assert JPEGLosslessSV1 in problem and "pylibjpeg" in problem and "cannot be decoded" in problem

    problem = refusal(write_compressed_dicom(tmp_path / "broken_j2k.dcm", gray, JPEG2000Lossless, b"not a codestream"))
    assert "cannot decode DICOM pixel data" in problem and "JPEG 2000" in problem and "\n" not in problem

    (tmp_path / "text.dcm").write_text("patient notes, not an image\n" * 10)
    assert "not a readable DICOM file" in refusal(tmp_path / "text.dcm")


def test_dicom_bomb_refused_from_the_header(tmp_path, gray):
    path = write_dicom(tmp_path / "bomb.dcm", gray)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 20000  # 400 megapixels claimed; 50 kB of pixels present
    ds.save_as(path, enforce_file_format=True)
    assert "too large" in refusal(path)


# ----------------------------------------------------------------------------- guard rails
def png_claiming_size(source_png: bytes, width: int, height: int) -> bytes:
    """The same PNG with its IHDR header patched to claim another size (CRC fixed)."""
    start = 8 + 8  # signature, then the IHDR chunk's length and type
    ihdr = struct.pack(">II", width, height) + source_png[start + 8:start + 13]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return source_png[:start] + ihdr + crc + source_png[start + 17:]


def test_refusals_name_the_file_and_the_problem(tmp_path, xray_jpeg, gray):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # truncated files must fail, not load half-grey
    (tmp_path / "empty.jpeg").write_bytes(b"")
    assert refusal(tmp_path / "empty.jpeg") == "empty file"

    data = xray_jpeg.read_bytes()
    (tmp_path / "cut.jpeg").write_bytes(data[: len(data) // 2])
    assert "truncated" in refusal(tmp_path / "cut.jpeg")
    Image.fromarray(gray).save(tmp_path / "whole.png")
    png = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    assert "cannot decode image" in refusal(tmp_path / "cut.png")

    (tmp_path / "notes.png").write_text("not an image at all")
    assert "not a readable image" in refusal(tmp_path / "notes.png")
    assert refusal(tmp_path / "missing.png") == "file not found"

    Image.fromarray(gray[:20, :20]).save(tmp_path / "tiny.png")
    assert "too small: 20x20" in refusal(tmp_path / "tiny.png")


def test_decompression_bomb_refused_before_decoding(tmp_path, gray):
    Image.fromarray(gray).save(tmp_path / "small.png")
    bomb = png_claiming_size((tmp_path / "small.png").read_bytes(), 9000, 9000)
    (tmp_path / "bomb.png").write_bytes(bomb)
    assert 9000 * 9000 > MAX_PIXELS and len(bomb) < 100_000
    problem = refusal(tmp_path / "bomb.png")
    assert "too large: 9000x9000" in problem  # from the header; decoding would have hit broken data


# ----------------------------------------------------------------------------- warnings
def only_warning(path) -> str:
    warnings = load_image(path, 64).warnings
    assert len(warnings) == 1, warnings
    return warnings[0]


def test_warnings_fire_on_unlikely_chest_xrays(tmp_path, gray):
    import matplotlib

    heat = (matplotlib.colormaps["jet"](gray)[..., :3] * 255).astype(np.uint8)  # a heat-map screenshot
    Image.fromarray(heat).save(tmp_path / "heat.png")
    assert "colourful" in only_warning(tmp_path / "heat.png")

    rng = np.random.default_rng(1)
    flat = np.clip(128 + rng.normal(0, 2, gray.shape), 0, 255).astype(np.uint8)
    Image.fromarray(flat).save(tmp_path / "flat.png")
    assert "nearly constant" in only_warning(tmp_path / "flat.png")

    Image.fromarray(gray).resize((600, 200)).save(tmp_path / "wide.png")
    assert "aspect ratio 3.0:1" in only_warning(tmp_path / "wide.png")


def test_no_warnings_on_real_xrays(kermany_dir):
    test_images = [p for cls in ("NORMAL", "PNEUMONIA") for p in sorted((kermany_dir / "test" / cls).glob("*.jpeg"))[:30]]
    native = sorted((kermany_dir / "val").glob("*/*.jpeg"))  # full-resolution originals, not squared
    assert len(test_images) == 60 and len(native) >= 8
    for path in test_images + native:
        loaded = load_image(path, 64)
        assert loaded.warnings == [], (path, loaded.warnings)
        np.testing.assert_array_equal(loaded.array, load_image(path, 64).array)


# ----------------------------------------------------------------------------- folders and training CSVs
def test_folder_scan_finds_dicom_and_skips_debris(tmp_path, gray):
    root = tmp_path / "scans"
    (root / "sub").mkdir(parents=True)
    (root / "__MACOSX").mkdir()
    write_dicom(root / "b.dcm", gray)
    Image.fromarray(gray).save(root / "sub" / "a.png")
    Image.fromarray(gray).save(root / "__MACOSX" / "c.png")
    Image.fromarray(gray).save(root / ".hidden.png")
    (root / "notes.txt").write_text("x")
    assert [Path(p).relative_to(root).as_posix() for p, _ in iter_inputs([root])] == ["b.dcm", "sub/a.png"]
    assert list(iter_inputs([tmp_path / "nothing*.png"])) == [(str(tmp_path / "nothing*.png"), "pattern matches no files")]


def test_training_csv_reads_dicom_and_reports_failures(tmp_path, kermany_dir):
    sources = sorted((kermany_dir / "test" / "NORMAL").glob("*.jpeg"))[:3]
    rows = ["path,label,patient_id"]
    for i, src in enumerate(sources):
        write_dicom(tmp_path / f"n{i}.dcm", read_gray(src))
        rows.append(f"n{i}.dcm,NORMAL,p{i}")
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 40)
    rows.append("broken.dcm,PNEUMONIA,p9")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")

    collection = read_source(tmp_path / "data.csv")
    images = load_collection(collection, 64, use_cache=False)
    assert len(images) == 3 and list(collection.records["path"]) == [str(tmp_path / f"n{i}.dcm") for i in range(3)]
    for i, src in enumerate(sources):
        np.testing.assert_array_equal(images[i], load_image(tmp_path / f"n{i}.dcm", 64).array)
    [(path, reason)] = collection.skipped
    assert path == str(tmp_path / "broken.dcm") and "DICOM" in reason
