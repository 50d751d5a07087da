"""Where bastion caches downloads and trained models."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` if given, else ``$BASTION_CACHE``, else ``~/.cache/bastion``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("BASTION_CACHE"):
        return Path(os.environ["BASTION_CACHE"]).expanduser()
    return Path("~/.cache/bastion").expanduser()
