"""Patient-grouped validation split on the real Kermany train set, and patient ids from file names."""
from __future__ import annotations

import pytest

from pneumoscan.config import DataConfig
from pneumoscan.data.dataset import assign_splits
from pneumoscan.data.patients import patient_id, patient_ids
from pneumoscan.data.sources import Collection, read_kermany
from pneumoscan.data.splits import grouped_holdout


@pytest.fixture(scope="module")
def kermany(kermany_dir) -> Collection:
    return read_kermany(kermany_dir)


@pytest.fixture(scope="module")
def default_splits(kermany):
    return assign_splits(kermany, DataConfig())


def patients(splits, name) -> set[str]:
    return set(splits.loc[splits["split"] == name, "patient_id"])


def pneumonia_share(splits, name) -> float:
    return float(splits.loc[splits["split"] == name, "label"].mean())


@pytest.mark.parametrize("name, expected", [
    ("person1000_bacteria_2931.jpeg", "person1000"),
    ("person1_virus_6.jpeg", "person1"),
    ("IM-0001-0001.jpeg", "IM-0001"),
    ("NORMAL2-IM-0246-0001-0001.jpeg", "NORMAL2-IM-0246"),
    ("NORMAL2-IM-0246-0001-0002.jpeg", "NORMAL2-IM-0246"),  # the same patient's second image
    ("train/NORMAL/IM-0115-0001.jpeg", "IM-0115"),
    ("scan_2024_01.png", None),
])
def test_patient_id_parses_every_kermany_name_pattern(name, expected):
    assert patient_id(name) == expected


def test_a_name_without_a_patient_becomes_its_own_group():
    assert patient_ids(["a/scan_1.png", "b/scan_2.png", "person7_virus_1.jpeg"]) == [
        "file:scan_1", "file:scan_2", "person7"]


def test_real_kermany_names_group_into_patients(kermany):
    train = kermany.records[kermany.records["split"] == "train"]
    per_patient = train.groupby("patient_id").size()
    # 5,216 train images come from far fewer patients; several have many images each.
    assert 2000 < len(per_patient) < 5216 and per_patient.max() > 5
    # One patient never carries both labels.
    assert (train.groupby("patient_id")["label"].nunique() == 1).all()


def test_kermany_val_is_carved_from_train_by_patient(kermany, default_splits):
    original, splits = kermany.records, default_splits
    # train/val/test on the official folders: test untouched, Kaggle's val renamed, val from train only.
    assert (splits.loc[original["split"] == "test", "split"] == "test").all()
    assert (splits.loc[original["split"] == "val", "split"] == "kaggle_val").all()
    assert set(splits.loc[original["split"] == "train", "split"]) == {"train", "val"}
    assert not patients(splits, "train") & patients(splits, "val")

    n_train, n_val = (splits["split"] == "train").sum(), (splits["split"] == "val").sum()
    assert 0.10 <= n_val / (n_train + n_val) <= 0.15
    assert abs(pneumonia_share(splits, "val") - pneumonia_share(splits, "train")) < 0.03


def test_split_is_deterministic_for_a_seed_and_changes_with_it(kermany, default_splits):
    first = default_splits
    again = assign_splits(kermany, DataConfig(split_seed=DataConfig().split_seed))
    other = assign_splits(kermany, DataConfig(split_seed=DataConfig().split_seed + 1))
    assert first["split"].equals(again["split"])
    val = patients(first, "val")
    assert val != patients(other, "val")
    assert not patients(other, "train") & patients(other, "val")


def test_a_source_without_val_or_test_gets_both_carved_by_patient(kermany):
    # A CSV of the user's own images, all marked train: val and test are held out by patient.
    # (Every third real train image keeps it quick; patients still have several images each.)
    train = kermany.records[kermany.records["split"] == "train"].iloc[::3].reset_index(drop=True)
    collection = Collection(train.copy(), "csv", kermany.root)
    splits = assign_splits(collection, DataConfig(val_fraction=0.12))
    sets = {name: patients(splits, name) for name in ("train", "val", "test")}
    assert all(sets.values())
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    share = {name: pneumonia_share(splits, name) for name in sets}
    assert abs(share["val"] - share["train"]) < 0.03 and abs(share["test"] - share["train"]) < 0.03


def test_grouped_holdout_refuses_impossible_requests():
    with pytest.raises(ValueError, match="3 patients"):
        grouped_holdout([0, 1, 0, 1], ["a", "a", "b", "c"], 0.12, seed=0)
    with pytest.raises(ValueError, match="1 classes"):
        grouped_holdout([1] * 20, [str(i) for i in range(20)], 0.25, seed=0)


@pytest.mark.parametrize("fraction", [0.05, 0.12, 0.3, 0.5])
def test_the_validation_split_is_the_fraction_asked_for_within_one_patient(kermany, fraction):
    train = kermany.records[kermany.records["split"] == "train"]
    held = grouped_holdout(train["label"], train["patient_id"], fraction, seed=7)
    largest = train.groupby("patient_id").size().max()  # one patient's images
    for label in (0, 1):
        of_class = (train["label"] == label).to_numpy()
        assert abs(held[of_class].sum() - fraction * of_class.sum()) <= largest, (label, fraction)
    assert abs(held.mean() - fraction) <= 2 * largest / len(train)
    assert not set(train["patient_id"][held]) & set(train["patient_id"][~held])


def test_val_fraction_of_a_run_is_honoured(kermany):
    splits = assign_splits(kermany, DataConfig(val_fraction=0.3))
    from_train = splits[splits["split"].isin(["train", "val"])]
    assert abs((from_train["split"] == "val").mean() - 0.3) < 0.005  # was 33% (1 / round(1 / 0.3))
