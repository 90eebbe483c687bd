"""Data sources on real data: the Kermany folder, a Kaggle-style nested copy with macOS
debris, the PneumoniaMNIST npz, CSV manifests, auto-detection, and undecodable images."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pneumoscan.data.cache import load_collection
from pneumoscan.imaging import load_image
from pneumoscan.data.sources import (
    DataSourceError,
    read_csv_manifest,
    read_kermany,
    read_medmnist,
    read_source,
)

NORMAL, PNEUMONIA = 0, 1


def counts(collection) -> dict[tuple[str, int], int]:
    return collection.records.groupby(["split", "label"]).size().to_dict()


def skipped_reasons(collection) -> dict[str, str]:
    return {Path(path).name: reason for path, reason in collection.skipped}


# ---------------------------------------------------------------- Kermany folder
def test_kermany_folder_counts_equal_the_official_ones(kermany_dir):
    collection = read_kermany(kermany_dir)
    assert collection.kind == "kermany"
    assert counts(collection) == {
        ("train", NORMAL): 1341, ("train", PNEUMONIA): 3875,
        ("val", NORMAL): 8, ("val", PNEUMONIA): 8,
        ("test", NORMAL): 234, ("test", PNEUMONIA): 390,
    }
    assert collection.skipped == []
    # Labels come from the class folder, never from anywhere else.
    folder_label = collection.records["path"].map(lambda p: {"NORMAL": 0, "PNEUMONIA": 1}[Path(p).parent.name])
    assert (folder_label == collection.records["label"]).all()
    # Every Kermany file name carries its patient, so none falls back to a per-file id.
    assert not collection.records["patient_id"].str.startswith("file:").any()


def test_kermany_folder_is_found_from_the_folder_above(shared_data, kermany_dir):
    collection = read_source(shared_data)
    assert collection.kind == "kermany"
    assert collection.root == kermany_dir
    assert len(collection.records) == 5856


@pytest.fixture
def kaggle_copy(tmp_path, copy_real_images):
    """A Kaggle-style download: chest_xray/chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}
    with real images, plus the debris a macOS zip and a careless user leave behind."""
    root = tmp_path / "download" / "chest_xray" / "chest_xray"
    for split in ("train", "val", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            copy_real_images(split, cls, 2, root / split / cls)
    (root / "train" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    macosx = root / "train" / "__MACOSX"
    macosx.mkdir()
    (macosx / "._IM-0115-0001.jpeg").write_bytes(b"\0\5\26\7resource fork")
    nested_macosx = root / "test" / "PNEUMONIA" / "__MACOSX"
    nested_macosx.mkdir()
    (nested_macosx / "._person1_virus_6.jpeg").write_bytes(b"\0\5\26\7resource fork")
    (root / "test" / "NORMAL" / "notes.txt").write_text("radiologist notes\n")
    copy_real_images("train", "PNEUMONIA", 1, root / "train" / "COVID")
    return root


def test_kaggle_nested_copy_is_read_and_debris_is_skipped_and_reported(kaggle_copy):
    collection = read_source(kaggle_copy.parent.parent)  # the folder the zip was unpacked into
    assert collection.kind == "kermany"
    assert collection.root == kaggle_copy
    assert counts(collection) == {(s, c): 2 for s in ("train", "val", "test") for c in (NORMAL, PNEUMONIA)}
    assert all(Path(p).is_relative_to(kaggle_copy) for p in collection.records["path"])
    paths = " ".join(collection.records["path"])
    assert "__MACOSX" not in paths and "COVID" not in paths and ".DS_Store" not in paths

    reported = {Path(path).relative_to(kaggle_copy).as_posix(): reason for path, reason in collection.skipped}
    # Each piece of debris is reported once, at the level where it was met, with a reason.
    assert set(reported) >= {
        "train/.DS_Store", "train/NORMAL/.DS_Store", "train/__MACOSX",
        "test/NORMAL/notes.txt", "train/COVID",
    }
    assert any(p.startswith("test/PNEUMONIA/__MACOSX") for p in reported)
    assert "not an image" in reported["test/NORMAL/notes.txt"] and ".txt" in reported["test/NORMAL/notes.txt"]
    assert "unknown class folder" in reported["train/COVID"]
    assert "macOS" in reported["train/__MACOSX"] or "hidden" in reported["train/__MACOSX"]
    assert all(reason for reason in reported.values())


def test_kermany_folder_without_images_is_an_error_naming_it(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "NORMAL").mkdir(parents=True)
    with pytest.raises(DataSourceError, match="no images found") as err:
        read_kermany(tmp_path)
    assert str(tmp_path) in str(err.value)


# ---------------------------------------------------------------- MedMNIST
def test_medmnist_npz_has_the_official_split_sizes(mnist_npz):
    collection = read_source(mnist_npz)
    assert collection.kind == "medmnist"
    assert counts(collection) == {
        ("train", NORMAL): 1214, ("train", PNEUMONIA): 3494,
        ("val", NORMAL): 135, ("val", PNEUMONIA): 389,
        ("test", NORMAL): 234, ("test", PNEUMONIA): 390,
    }
    assert {s: a.shape for s, a in collection.arrays.items()} == {
        "train": (4708, 28, 28), "val": (524, 28, 28), "test": (624, 28, 28)}
    # Each record points at its own array row, whose label matches the npz's.
    with np.load(mnist_npz) as npz:
        labels = npz["test_labels"].reshape(-1)
        row = collection.records[collection.records["split"] == "test"].iloc[100]
        assert int(row["label"]) == int(labels[100]) and row["path"].endswith(":test:100")
        images = load_collection(collection, 28)
        first_test = collection.records.index[collection.records["split"] == "test"][0]
        assert np.array_equal(images[first_test], npz["test_images"][0])


def test_medmnist_found_in_a_folder_and_by_kind(mnist_npz):
    assert read_source(mnist_npz.parent).kind == "medmnist"
    assert read_source(mnist_npz.parent.parent / "pneumoniamnist", kind="medmnist").root == mnist_npz


def test_medmnist_errors_name_the_file(tmp_path):
    not_npz = tmp_path / "broken.npz"
    not_npz.write_text("this is not a zip archive")
    with pytest.raises(DataSourceError, match="not a readable .npz") as err:
        read_medmnist(not_npz)
    assert str(not_npz) in str(err.value)
    wrong_keys = tmp_path / "other.npz"
    np.savez(wrong_keys, x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataSourceError, match="train_images") as err:
        read_medmnist(wrong_keys)
    assert str(wrong_keys) in str(err.value)


# ---------------------------------------------------------------- CSV manifest
def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_manifest_reads_good_rows_and_reports_bad_ones_with_line_numbers(tmp_path, copy_real_images):
    normal = copy_real_images("train", "NORMAL", 2, tmp_path / "images")
    sick = copy_real_images("train", "PNEUMONIA", 2, tmp_path / "images")
    outside = copy_real_images("test", "NORMAL", 1, tmp_path / "elsewhere")[0]
    manifest = write_csv(tmp_path / "manifest.csv", ["path", "label", "patient_id", "split"], [
        [f"images/{normal[0].name}", "NORMAL", "p1", "train"],           # line 2
        [f"images/{normal[1].name}", "0", "", ""],                       # line 3: id from name, split train
        [f"images/{sick[0].name}", "pneumonia", "p2", "TEST"],           # line 4
        [f"images/{sick[1].name}", "1", "p3", "val"],                    # line 5
        [str(outside), "Normal", "p4", "test"],                          # line 6: absolute path
        [f"images/{sick[0].name}", "maybe", "p5", "train"],              # line 7: bad label
        ["images/missing.jpeg", "NORMAL", "p6", "train"],                # line 8: no such file
        [f"images/{sick[1].name}", "PNEUMONIA", "p7", "holdout"],        # line 9: bad split
    ])
    collection = read_csv_manifest(manifest)
    recs = collection.records
    assert collection.kind == "csv"
    assert list(recs["path"]) == [str(tmp_path / "images" / p.name) for p in (normal[0], normal[1], sick[0], sick[1])] + [str(outside)]
    assert list(recs["label"]) == [0, 0, 1, 1, 0]
    assert list(recs["split"]) == ["train", "train", "test", "val", "test"]
    assert recs["patient_id"].iloc[0] == "p1"
    assert recs["patient_id"].iloc[1] == normal[1].name.rsplit("-", 1)[0]  # IM-xxxx from the name

    reasons = [reason for _, reason in collection.skipped]
    assert len(reasons) == 3
    assert f"{manifest}:7" in reasons[0] and "'maybe'" in reasons[0]
    assert f"{manifest}:8" in reasons[1] and "file not found" in reasons[1]
    assert collection.skipped[1][0] == str(tmp_path / "images" / "missing.jpeg")
    assert f"{manifest}:9" in reasons[2] and "holdout" in reasons[2]


def test_csv_manifest_errors_name_the_file(tmp_path, copy_real_images):
    image = copy_real_images("train", "NORMAL", 1, tmp_path)[0]
    no_label = write_csv(tmp_path / "no_label.csv", ["path", "diagnosis"], [[image.name, "NORMAL"]])
    with pytest.raises(DataSourceError, match="needs columns path,label") as err:
        read_source(no_label)
    assert str(no_label) in str(err.value)
    nothing_usable = write_csv(tmp_path / "bad.csv", ["path", "label"], [["gone.jpeg", "NORMAL"]])
    with pytest.raises(DataSourceError, match="no usable rows") as err:
        read_source(nothing_usable)
    assert str(nothing_usable) in str(err.value)


# ---------------------------------------------------------------- auto-detection
def wrong_input(tmp_path: Path, what: str) -> Path:
    if what == "text file":
        (tmp_path / "notes.txt").write_text("not data")
        return tmp_path / "notes.txt"
    return tmp_path / "nowhere" if what == "missing" else tmp_path


@pytest.mark.parametrize("what, message", [
    ("missing", "does not exist"),
    ("empty folder", "found no Kermany folder"),
    ("text file", "expected a folder, a .npz or a .csv"),
])
def test_read_source_rejects_wrong_inputs_naming_the_path(tmp_path, what, message):
    path = wrong_input(tmp_path, what)
    with pytest.raises(DataSourceError, match=message) as err:
        read_source(path)
    assert str(path) in str(err.value)


def test_read_source_auto_detects_each_kind(shared_data, mnist_npz, tmp_path, copy_real_images):
    image = copy_real_images("train", "NORMAL", 1, tmp_path)[0]
    manifest = write_csv(tmp_path / "m.csv", ["path", "label"], [[image.name, "NORMAL"]])
    assert read_source(shared_data).kind == "kermany"
    assert read_source(mnist_npz).kind == "medmnist"
    assert read_source(manifest).kind == "csv"


# ---------------------------------------------------------------- undecodable images
@pytest.mark.parametrize("use_cache", [False, True])
def test_corrupt_jpeg_in_a_training_folder_is_dropped_with_its_reason(tmp_path, kermany_dir, copy_real_images, use_cache):
    root = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            copy_real_images(split, cls, 3, root / split / cls)
    whole = sorted((kermany_dir / "train" / "NORMAL").glob("*.jpeg"))[10].read_bytes()
    (root / "train" / "NORMAL" / "IM-9999-0001.jpeg").write_bytes(whole[: len(whole) // 2])
    (root / "train" / "PNEUMONIA" / "person9999_bacteria_1.jpeg").write_bytes(b"")

    for attempt in range(2 if use_cache else 1):  # with the cache: the second read comes from it
        collection = read_kermany(root)
        assert len(collection.records) == 14
        images = load_collection(collection, 32, use_cache=use_cache)
        assert images.shape == (12, 32, 32) and images.dtype == np.uint8
        assert len(collection.records) == 12
        names = set(collection.records["path"].map(lambda p: Path(p).name))
        assert "IM-9999-0001.jpeg" not in names and "person9999_bacteria_1.jpeg" not in names
        reasons = skipped_reasons(collection)
        assert "cannot decode" in reasons["IM-9999-0001.jpeg"] and "truncated" in reasons["IM-9999-0001.jpeg"]
        assert reasons["person9999_bacteria_1.jpeg"] == "empty file"
        # The kept images are the real ones, in record order.
        first = collection.records["path"].iloc[0]
        assert np.array_equal(images[0], load_image(first, 32).array)
