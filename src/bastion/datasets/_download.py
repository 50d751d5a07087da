"""The download cache shared by the loaders of public data sets."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from bastion._cache import cache_root
from bastion.exceptions import BastionError

__all__ = ["fetch", "resolve_cache_dir"]

_CHUNK = 1 << 20


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None, dataset: str) -> Path:
    """The folder holding ``dataset``'s files.

    ``cache_dir`` if given, else ``$BASTION_CACHE``, else ``~/.cache/bastion``; each data set
    gets its own sub-folder.
    """
    return cache_root(cache_dir) / dataset


def _download(url: str, dest: Path, *, md5: str | None, verbose: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Download to a temporary name in the same folder, then rename: an interrupted download
    # never leaves a truncated file that a later call would take for the real one.
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not verbose,
                leave=False,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if md5 is not None and digest.hexdigest() != md5:
            raise BastionError(
                f"The file downloaded from {url} is corrupt: its MD5 is {digest.hexdigest()}, "
                f"expected {md5}. Try again, or download it by hand and place it at {dest}."
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise BastionError(
            f"Could not download {url}: {exc}. Download it by hand and place it at {dest}."
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def fetch(
    url: str,
    dest: Path,
    *,
    download: bool,
    md5: str | None = None,
    verbose: bool = True,
) -> Path:
    """Return ``dest``, downloading it from ``url`` first if it is not there yet.

    Raises
    ------
    BastionError
        If the file is missing and ``download`` is False, or the download fails or is corrupt.
    """
    if dest.is_file():
        return dest
    if not download:
        raise BastionError(
            f"{dest.name} is not in the cache and download=False. Download it from {url} "
            f"and place it at {dest} (or pass download=True)."
        )
    _download(url, dest, md5=md5, verbose=verbose)
    return dest
