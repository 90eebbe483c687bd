import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The real data: $PNEUMOSCAN_DATA, else ../shared/data beside the repository.

    A relative $PNEUMOSCAN_DATA (the README's own commands use ../shared/data) means relative
    to where pytest was started; it is made absolute once, here, and written back, so every
    process a test starts (a notebook kernel in notebooks/, a CLI in a temporary folder)
    finds the same folder.
    """
    root = Path(os.path.abspath(Path(os.environ.get("PNEUMOSCAN_DATA", REPO.parent / "shared" / "data")).expanduser()))
    if "PNEUMOSCAN_DATA" in os.environ:
        os.environ["PNEUMOSCAN_DATA"] = str(root)
    return root


shared_data_dir()  # at collection time, before any test changes the working directory


def find_chromium() -> str:
    """The system Chromium (scripts/setup.sh installs it); a missing browser fails the browser tests."""
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no Chromium found on PATH (chromium, chromium-browser or google-chrome): "
                "run `bash scripts/setup.sh`, which installs it")


@pytest.fixture(scope="session")
def chromium() -> str:
    return find_chromium()


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "chest_xray_kermany_224").is_dir():
        pytest.fail(f"real data not found at {root}; set PNEUMOSCAN_DATA to the folder holding chest_xray_kermany_224/")
    return root


@pytest.fixture(scope="session")
def kermany_dir(shared_data) -> Path:
    return shared_data / "chest_xray_kermany_224"


@pytest.fixture(scope="session")
def mnist_npz(shared_data) -> Path:
    return shared_data / "pneumoniamnist" / "pneumoniamnist.npz"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tests share one decoded-image cache (fast) but never touch the user's ~/.cache.
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


TINY_OVERRIDES = {
    "data": {"source": "kermany", "image_size": 64, "max_per_class": 40},
    "model": {"name": "pneumonet_small", "width": 8},
    "train": {"epochs": 2, "max_minutes": None, "batch_size": 16, "tensorboard": True},
    "evaluate": {"bootstrap": 100},
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, shared_data):
    """One small real training run (64 px, 40 images per class and split, 2 epochs),
    shared by every test that needs a trained model."""
    os.environ.setdefault("PNEUMOSCAN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    from pneumoscan.config import resolve
    from pneumoscan.api import train

    out = tmp_path_factory.mktemp("tiny") / "run"
    return train(shared_data, out, config=resolve(overrides=TINY_OVERRIDES), verbose=0)


@pytest.fixture(scope="session")
def copy_real_images(kermany_dir):
    """``copy_real_images(split, cls, n, dest)``: put the first ``n`` real Kermany images of a
    split and class into ``dest`` (hard links where possible) and return their new paths."""
    import shutil

    def copy(split: str, cls: str, n: int, dest: Path) -> list[Path]:
        sources = sorted((kermany_dir / split / cls).glob("*.jpeg"))[:n]
        assert len(sources) == n, f"only {len(sources)} images in {split}/{cls}"
        dest.mkdir(parents=True, exist_ok=True)
        out = []
        for src in sources:
            target = dest / src.name
            try:
                os.link(src, target)
            except OSError:  # another file system: copy instead
                shutil.copy2(src, target)
            out.append(target)
        return out

    return copy


def make_site(kermany_dir: Path, folder: Path, per_class: int = 30, blur: bool = True) -> Path:
    """A small site: real Kermany train X-rays (the last of each class, sorted) through a
    softer detector, saved as PNG, with a CSV path,label,patient_id."""
    import pandas as pd
    from PIL import Image, ImageFilter

    from pneumoscan.data.patients import patient_ids

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in ("NORMAL", "PNEUMONIA"):
        for source in sorted((kermany_dir / "train" / label).glob("*.jpeg"))[-per_class:]:
            with Image.open(source) as image:
                image = image.convert("L")
                if blur:
                    image = image.filter(ImageFilter.GaussianBlur(image.width / 40))
                image.save(folder / f"{source.stem}.png")
            rows.append((f"{source.stem}.png", label, patient_ids([source])[0]))
    csv = folder / "site.csv"
    pd.DataFrame(rows, columns=["path", "label", "patient_id"]).to_csv(csv, index=False)
    return csv
