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
