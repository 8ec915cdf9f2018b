"""Fetching official files (checkpoints, ``dict.txt``) when online: atomic, resumable-safe, verified.

Nothing downloads at import or test time; callers ask for it explicitly (``onepeace download``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import CheckpointError

CACHE_DIR = Path(os.environ.get("ONEPEACE_CACHE", Path.home() / ".cache" / "onepeace"))


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, progress: bool = False) -> Path:
    """Download ``url`` to ``dest`` (written to a temporary name, then renamed). Returns ``dest``.

    ``file://`` URLs work too, which is how the tests exercise this without a network.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name)
            while chunk := r.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise CheckpointError(f"{url}: sha256 {digest.hexdigest()} does not match the expected {sha256}")
        shutil.move(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot download {url}: {getattr(e, 'reason', None) or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest
