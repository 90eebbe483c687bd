"""Where the data comes from, in this order: ``--data PATH``, ``$PNEUMOSCAN_DATA``,
the cache directory, then (PneumoniaMNIST only, announced) a download."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..paths import cache_dir
from .sources import DataSourceError, find_kermany_root

KAGGLE_HELP = (
    "The Kermany chest X-ray set needs a Kaggle account, so pneumoscan cannot fetch it for you. "
    "Download 'chest-xray-pneumonia' (Paul Mooney) from Kaggle, unzip it, and pass the folder "
    "with --data PATH (or set PNEUMOSCAN_DATA), or put it at {cache}."
)


def _usable(path: Path, source: str) -> bool:
    if source in ("auto", "kermany") and path.is_dir() and find_kermany_root(path):
        return True
    if source in ("auto", "medmnist"):
        if path.is_file() and path.suffix == ".npz":
            return True
        if path.is_dir() and (any(path.glob("pneumoniamnist*.npz")) or any(path.glob("*/pneumoniamnist*.npz"))):
            return True
    return source in ("auto", "csv") and path.is_file() and path.suffix == ".csv"


def resolve_data_path(flag: str | None, source: str = "auto", download: bool = True) -> Path:
    """The data location, or a DataSourceError that says how to get the data."""
    if flag:
        return Path(flag).expanduser()  # an explicit path is never second-guessed
    env = os.environ.get("PNEUMOSCAN_DATA")
    if env:
        return Path(env).expanduser()
    cached = cache_dir() / "data"
    if cached.exists() and _usable(cached, source):
        return cached
    medmnist = cache_dir() / "medmnist" / "pneumoniamnist.npz"
    if source in ("auto", "medmnist") and medmnist.is_file():
        return medmnist
    if source == "medmnist" and download:
        from .download import download_medmnist

        print("pneumoscan: no local data found; downloading PneumoniaMNIST (28 px)", file=sys.stderr)
        return download_medmnist(28)
    raise DataSourceError(
        "no data found: pass --data PATH or set PNEUMOSCAN_DATA. "
        + KAGGLE_HELP.format(cache=cached)
        + " For PneumoniaMNIST run: pneumoscan data download pneumoniamnist --size 28"
    )
