"""Where the data comes from, in this order: ``--data PATH``, ``$PNEUMOSCAN_DATA``, the cache
directory. Nothing is downloaded behind the user's back: with ``source = "medmnist"`` and no
local copy, PneumoniaMNIST (28 px) is downloaded with an announcement and an MD5 check; in
every other case a missing data set is an error that names the command that fetches it.

A relative path (flag or variable) is resolved once, here, against the caller's working
directory, so the same path means the same folder to every later step (a notebook kernel
or a worker process that runs elsewhere included).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import DataSourceError
from ..paths import cache_dir
from .sources import find_kermany_root

DATA_ENV = "PNEUMOSCAN_DATA"
KAGGLE_HELP = (
    "The Kermany chest X-ray set needs a Kaggle account, so pneumoscan cannot fetch it for you. "
    "Download 'chest-xray-pneumonia' (Paul Mooney) from Kaggle, unzip it, and pass the folder "
    "with --data PATH (or set PNEUMOSCAN_DATA), or put it at {cache}."
)
MEDMNIST_HELP = "For PneumoniaMNIST run: pneumoscan data download pneumoniamnist --size 28"


def absolute(path: str | Path) -> Path:
    """``path`` with ``~`` expanded, made absolute against the current working directory."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _usable(path: Path, source: str) -> bool:
    if source in ("auto", "kermany") and path.is_dir() and find_kermany_root(path):
        return True
    if source in ("auto", "medmnist"):
        if path.is_file() and path.suffix == ".npz":
            return True
        if path.is_dir() and (any(path.glob("pneumoniamnist*.npz")) or any(path.glob("*/pneumoniamnist*.npz"))):
            return True
    return source in ("auto", "csv") and path.is_file() and path.suffix == ".csv"


def resolve_data_path(flag: str | Path | None, source: str = "auto", download: bool = True) -> Path:
    """The data location as an absolute path, or a DataSourceError that says how to get the data."""
    if flag:
        return absolute(flag)  # an explicit path is never second-guessed
    env = os.environ.get(DATA_ENV)
    if env:
        return absolute(env)
    cached = cache_dir() / "data"
    if cached.exists() and _usable(cached, source):
        return absolute(cached)
    medmnist = cache_dir() / "medmnist" / "pneumoniamnist.npz"
    if source in ("auto", "medmnist") and medmnist.is_file():
        return absolute(medmnist)
    if source == "medmnist" and download:
        from .download import download_medmnist

        print("pneumoscan: no local PneumoniaMNIST found; downloading it (28 px, 4 MB, MD5-checked) into "
              f"{medmnist.parent}", file=sys.stderr)
        return absolute(download_medmnist(28))
    raise DataSourceError(f"no data found: pass --data PATH or set {DATA_ENV}. "
                          + KAGGLE_HELP.format(cache=cached) + " " + MEDMNIST_HELP)
