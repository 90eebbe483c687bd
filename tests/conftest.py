import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The real data: $PNEUMOSCAN_DATA, else ../shared/data beside the repository."""
    root = Path(os.environ.get("PNEUMOSCAN_DATA", REPO.parent / "shared" / "data"))
    return root


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
    "train": {"epochs": 2, "max_minutes": None, "batch_size": 16},
    "evaluate": {"bootstrap": 100},
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, shared_data):
    """One small real training run (64 px, 40 images per class and split, 2 epochs),
    shared by every test that needs a trained model."""
    os.environ.setdefault("PNEUMOSCAN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    from pneumoscan.config import resolve
    from pneumoscan.train import train

    out = tmp_path_factory.mktemp("tiny") / "run"
    return train(resolve(overrides=TINY_OVERRIDES), shared_data, out, verbose=0)


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
