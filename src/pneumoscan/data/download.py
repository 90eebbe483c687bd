"""Fetch the official PneumoniaMNIST (MedMNIST v3) files: resumable, retried, MD5-verified.

Why so careful: the 224 px file is ~200 MB from Zenodo, which is slow and drops connections.
A download streams into ``<dest>.part``, resumes it with an HTTP ``Range`` request after a drop,
and becomes ``dest`` (one ``os.replace``) only once its MD5 matches, so ``dest`` is either
absent or exactly the published file.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import DownloadError
from ..paths import cache_dir

# Zenodo record 10519652 is MedMNIST v3 (MedMNIST+). The MD5s are the ones the medmnist package
# itself checks: INFO["pneumoniamnist"] in medmnist/info.py (MedMNIST/MedMNIST, v3.0.2).
ZENODO_URL = "https://zenodo.org/records/10519652/files/{filename}?download=1"
MEDMNIST_FILES: dict[int, tuple[str, str]] = {
    28: ("pneumoniamnist.npz", "28209eda62fecd6e6a2d98b1501bb15f"),
    64: ("pneumoniamnist_64.npz", "8f4eceb4ccffa70c672198ea285246c6"),
    128: ("pneumoniamnist_128.npz", "05b46931834c231683c68f40c47b2971"),
    224: ("pneumoniamnist_224.npz", "d6a3c71de1b945ea11211b03746c1fe1"),
}
MIRROR_ENV = "PNEUMOSCAN_MEDMNIST_URL"  # a mirror's base URL; also how the tests use a local server
_CHUNK = 1 << 20


def _entry(size: int) -> tuple[str, str]:
    if size not in MEDMNIST_FILES:
        raise ValueError(f"no PneumoniaMNIST file of size {size}; sizes: {', '.join(map(str, sorted(MEDMNIST_FILES)))}")
    return MEDMNIST_FILES[size]


def _default_dest(size: int, dest_dir: str | Path | None = None) -> Path:
    # The same place data/locate.py looks for a downloaded file.
    return (Path(dest_dir) if dest_dir is not None else cache_dir() / "medmnist") / _entry(size)[0]


def medmnist_url(size: int, base_url: str | None = None) -> str:
    """URL of the ``size`` px file: ``base_url``, else ``$PNEUMOSCAN_MEDMNIST_URL``, else Zenodo."""
    filename, _ = _entry(size)
    base = base_url or os.environ.get(MIRROR_ENV)
    return f"{base.rstrip('/')}/{filename}" if base else ZENODO_URL.format(filename=filename)


def md5sum(path: str | Path) -> str:
    """MD5 hex digest of a file, read in chunks so a 200 MB file never sits in memory."""
    with open(path, "rb") as fh:
        # An integrity check, not security (usedforsecurity=False keeps it FIPS-safe).
        return hashlib.file_digest(fh, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def _fetch(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One attempt: extend ``part`` to the whole file. Raises on any network error or short read."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "pneumoscan"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
        if offset and resp.status == 206:
            match = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                part.unlink()  # a range we did not ask for cannot be appended: start over next attempt
                raise http.client.HTTPException(f"server answered Range bytes={offset}- with the wrong range")
        elif offset:
            offset = 0  # the server ignored Range (200) and sends the whole file: rewrite the part
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length else None
        got = offset
        with open(part, "ab" if offset else "wb") as fh, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.removesuffix(".part"), file=sys.stderr, disable=not progress,
        ) as bar:
            while chunk := resp.read(_CHUNK):
                fh.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
    if total is not None and got < total:  # the connection closed early without an error
        raise http.client.IncompleteRead(b"", total - got)


def download_file(
    url: str, dest: str | Path, md5: str, *,
    retries: int = 3, timeout: float = 30.0, backoff: float = 1.0, progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` and verify its MD5; return ``dest``.

    ``retries`` is the number of extra attempts after the first, ``backoff * 2**n`` seconds apart.
    Connection errors, short reads and HTTP 408/429/5xx are retried; other HTTP errors are not.
    """
    dest = Path(dest)
    if dest.is_file() and md5sum(dest) == md5:
        return dest  # already there: no network needed (works offline)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    errors: list[str] = []
    offline = True  # stays True only while every attempt failed before any server answered
    for attempt in range(retries + 1):
        if attempt and backoff > 0:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _fetch(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as exc:
            exc.close()  # an HTTPError holds the open response
            offline = False
            if exc.code == 416 and part.exists():
                # Range past the end: the part is whole (killed before the rename) or junk.
                if md5sum(part) == md5:
                    break
                part.unlink()
            elif not (exc.code in (408, 429) or exc.code >= 500):
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
            errors.append(f"HTTP {exc.code} {exc.reason}")
        except urllib.error.URLError as exc:  # no connection (DNS, refused, connect timeout)
            errors.append(f"cannot connect: {exc.reason}")
        except (OSError, http.client.HTTPException) as exc:  # dropped or stalled mid-transfer
            offline = False
            errors.append(f"{type(exc).__name__}: {exc}")
    else:
        kept = f"; the partial download is kept at {part} and the next call resumes it" if part.exists() else ""
        raise DownloadError(f"{url}: failed after {retries + 1} attempts ({'; '.join(errors)}){kept}", offline=offline)
    actual = md5sum(part)
    if actual != md5:
        part.unlink()  # a wrong file must not be resumed either
        raise DownloadError(f"{url}: MD5 mismatch for {dest.name}: expected {md5}, got {actual}; download deleted")
    os.replace(part, dest)  # atomic: dest only ever holds the verified file
    return dest


def offline_help(size: int, dest_dir: str | Path | None = None) -> str:
    """How to install the ``size`` px file by hand when this machine cannot reach the server."""
    filename, md5 = _entry(size)
    return (
        f"Cannot reach the download server. To install PneumoniaMNIST ({size} px) by hand:\n"
        f"  1. on a machine with internet, download {filename}\n"
        f"     from {ZENODO_URL.format(filename=filename)}\n"
        f"  2. check its MD5 is {md5} (md5sum {filename})\n"
        f"  3. copy it to {_default_dest(size, dest_dir)}\n"
        f"Or pass --data PATH with the path of your copy of {filename}."
    )


def download_medmnist(size: int = 28, dest_dir: str | Path | None = None, *, base_url: str | None = None, **kw) -> Path:
    """Download the official ``size`` px PneumoniaMNIST file (default: into the cache) and return its path.

    ``kw`` goes to :func:`download_file`. When the server is unreachable the DownloadError
    carries :func:`offline_help`, which says where to put a hand-copied file.
    """
    dest = _default_dest(size, dest_dir)
    try:
        return download_file(medmnist_url(size, base_url), dest, MEDMNIST_FILES[size][1], **kw)
    except DownloadError as exc:
        if exc.offline:
            raise DownloadError(f"{exc}\n\n{offline_help(size, dest_dir)}", offline=True) from exc
        raise
