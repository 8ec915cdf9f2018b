"""Fetching official files (checkpoints, ``dict.txt``): ``onepeace download NAME|URL``.

Nothing downloads at import or test time; callers ask for it explicitly.

* **Atomic**: the bytes go to ``DEST.part``, which is renamed to ``DEST`` only once it is complete
  and verified; an existing ``DEST`` is refused before anything is fetched, unless ``force``.
* **Resumable**: an interrupted HTTP(S) transfer keeps ``DEST.part`` and, in ``DEST.part.json``,
  the URL and the server's validator (a strong ETag or Last-Modified). The next call for the same
  URL asks only for the rest (``Range``), with ``If-Range`` so that a server whose file changed
  sends it whole instead. Without a validator, or for ``file://`` URLs, no partial file is kept.
* **Verified**: the length against the server's, and the SHA-256 when one is known (given, or
  listed in :data:`KNOWN`); a mismatch deletes the download.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .._version import __version__
from ..errors import CheckpointError, OnePeaceError, OutputError
from .official import CHECKPOINT_URLS, DICT_URL

CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class Known:
    """A file ``onepeace download NAME`` knows: where it is, what it is, its SHA-256 if known."""

    url: str
    about: str
    sha256: str | None = None


KNOWN: dict[str, Known] = {
    "ONE-PEACE": Known(CHECKPOINT_URLS["ONE-PEACE"],
                       "pretrained 4B model, all modalities (3.9 B parameters: 15.5 GB as fp32)"),
    "ONE-PEACE_Grounding": Known(CHECKPOINT_URLS["ONE-PEACE_Grounding"],
                                 "RefCOCOg visual grounding (2.7 B parameters: 11.0 GB as fp32)"),
    "ONE-PEACE_VGGSound": Known(CHECKPOINT_URLS["ONE-PEACE_VGGSound"],
                                "VGGSound audio classifier (1.5 B parameters: 6.2 GB as fp32)"),
    "ONE-PEACE_Vision": Known(
        "https://one-peace-shanghai.oss-accelerate.aliyuncs.com/one_peace_checkpoints/one-peace-vision.pkl",
        "vision branch (1.5 B parameters: 6.1 GB as fp32)"),
    "dict": Known(DICT_URL, "fairseq dictionary that `onepeace convert --dict` needs (603 KB)",
                  "2c31c5b236661067fe8626775eb995ef5fe808ac87d2ad4a6ddbef68550f5cc6"),
}


def resolve(source: str) -> tuple[str, str | None]:
    """A known name (any case) or a URL -> (URL, SHA-256 if known)."""
    if "://" in source:
        scheme = urllib.parse.urlparse(source).scheme.lower()
        if scheme not in ("http", "https", "file"):
            raise OnePeaceError(f"cannot download {source}: give an http://, https:// or file:// URL")
        return source, None
    for name, k in KNOWN.items():
        if name.lower() == source.lower():
            return k.url, k.sha256
    raise OnePeaceError(f"unknown name {source!r}: give one of {', '.join(KNOWN)} (see --list), or a URL")


def file_name(url: str) -> str:
    """The file name a URL's path ends with."""
    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    if name in ("", ".", ".."):
        raise OnePeaceError(f"cannot tell a file name from {url}: it must end with one")
    return name


def _check_sha(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise OnePeaceError(f"--sha256 {sha256!r} is not a SHA-256 (64 hexadecimal digits)")
    return sha256.lower()


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


@contextlib.contextmanager
def _locked(part: Path) -> Iterator[BinaryIO]:
    """``part`` opened for reading and writing (created if absent, kept otherwise), held exclusively."""
    f = os.fdopen(os.open(part, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666), "r+b")
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise CheckpointError(f"{part} is being written by another download; wait for it to end") from None
        yield f
    finally:
        f.close()


class _Incomplete(Exception):
    """The transfer ended early (the reason is the message)."""


def _validator(headers) -> str | None:
    """What If-Range may carry: a strong ETag, else Last-Modified."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _read_meta(meta: Path) -> dict:
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _open(url: str, offset: int, validator: str | None):
    headers = {"User-Agent": f"onepeace/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        headers["If-Range"] = validator or ""
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def _hash_prefix(f: BinaryIO, n: int) -> "hashlib._Hash":
    digest = hashlib.sha256()
    f.seek(0)
    while n > 0 and (chunk := f.read(min(CHUNK, n))):
        digest.update(chunk)
        n -= len(chunk)
    return digest


def _transfer(url: str, f: BinaryIO, part: Path, meta: Path, progress: bool) -> str:
    """Fill ``f`` (the locked ``part``) with the file at ``url``, resuming when it can; returns
    the SHA-256 of the whole file."""
    resumable = urllib.parse.urlparse(url).scheme.lower() in ("http", "https")
    state = _read_meta(meta)
    offset = f.seek(0, os.SEEK_END)
    if not (resumable and offset and state.get("url") == url and state.get("validator")):
        offset = 0
    while True:
        try:
            r = _open(url, offset, state.get("validator"))
        except urllib.error.HTTPError as e:
            if e.code != 416 or not offset:
                raise
            if state.get("size") == offset:  # nothing left to send: the part is the whole file
                return _hash_prefix(f, offset).hexdigest()
            offset = 0  # the part does not fit the server's file: start again
            continue
        with r:
            status = getattr(r, "status", None) or 200  # file:// responses have no status
            start = 0
            if status == 206:
                m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", r.headers.get("Content-Range", "").strip())
                if not m or int(m.group(1)) != offset:
                    offset = 0  # an answer we cannot append: start again
                    continue
                start = offset
                total = int(m.group(2)) if m.group(2) != "*" else None
            else:  # the whole file: first try, no range support, or the file changed on the server
                length = r.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            meta_url = url if resumable else None
            return _receive(r, f, part, meta, meta_url, start, total, progress)


def _receive(r, f: BinaryIO, part: Path, meta: Path, url: str | None, start: int, total: int | None,
             progress: bool) -> str:
    """Append the response body to the first ``start`` bytes of ``f``; returns the SHA-256. With
    a ``url`` (HTTP) and a validator from the server, ``meta`` records what a resume needs."""
    from .format import write_text_atomic

    digest = _hash_prefix(f, start)
    f.seek(start)
    f.truncate()
    validator = _validator(r.headers)
    if url is not None and validator:
        write_text_atomic(str(meta), json.dumps({"url": url, "validator": validator, "size": total}))
    elif meta.exists():
        meta.unlink()
    if total is not None:
        free = shutil.disk_usage(part.parent).free
        if total - start > free:
            raise CheckpointError(f"{part.parent} has {human_size(free)} free; the download needs "
                                  f"{human_size(total - start)} more")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                   desc=part.name.removesuffix(".part"), disable=None, leave=False, dynamic_ncols=True)
    got = start
    try:
        while chunk := r.read(CHUNK):
            f.write(chunk)
            digest.update(chunk)
            got += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    except http.client.HTTPException as e:
        raise _Incomplete(f"the transfer broke off ({type(e).__name__})") from None
    finally:
        if bar is not None:
            bar.close()
    f.flush()
    if total is not None and got != total:
        raise _Incomplete(f"the connection closed after {human_size(got)} of {human_size(total)}")
    os.fsync(f.fileno())
    return digest.hexdigest()


def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None, progress: bool = False,
          *, force: bool = False) -> tuple[Path, str]:
    """Download ``url`` to ``dest`` (see the module notes); returns ``(dest, its SHA-256)``."""
    from ..outputs import check_output_file

    dest = Path(dest)
    expected = _check_sha(sha256)
    if not dest.is_dir():
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create {dest.parent}: {e.strerror or e}") from None
    check_output_file(dest, force, hint="--force (force=True in Python)")
    part = dest.with_name(dest.name + ".part")
    meta = dest.with_name(dest.name + ".part.json")
    with _locked(part) as f:
        done = False
        try:
            digest = _transfer(url, f, part, meta, progress)
            if expected is not None and digest != expected:
                meta.unlink(missing_ok=True)  # a wrong file is not worth resuming
                raise CheckpointError(f"{url}: sha256 {digest} does not match the expected {expected}; "
                                      "the download was deleted")
            os.replace(part, dest)
            done = True
        except (urllib.error.URLError, OSError, _Incomplete, ValueError) as e:
            hint = ""
            if _keep_partial(part, meta):
                hint = f"; {human_size(part.stat().st_size)} kept in {part}: run the same command again to resume"
            raise CheckpointError(f"cannot download {url}: {_reason(e)}{hint}") from None
        except BaseException:  # sha mismatch, disk space, Ctrl-C: keep only what can resume
            if not done:
                _keep_partial(part, meta)
            raise
        finally:
            if done and meta.exists():
                meta.unlink()
    return dest, digest


def _reason(e: BaseException) -> str:
    """One line on why a transfer failed."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        e = e.reason if isinstance(e.reason, BaseException) else e
        if isinstance(e, urllib.error.URLError):
            return str(e.reason)
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _keep_partial(part: Path, meta: Path) -> bool:
    """Keep ``part`` when a later call can resume it (its meta is written and it has bytes);
    otherwise remove both. A sha mismatch removes the meta first, so nothing is kept."""
    if meta.exists() and part.exists() and part.stat().st_size > 0:
        return True
    for p in (part, meta):
        if p.exists():
            p.unlink()
    return False


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, progress: bool = False,
             *, force: bool = False) -> Path:
    """Download ``url`` to ``dest`` atomically (resumable, verified); returns ``dest``.

    ``file://`` URLs work too, which is how the tests exercise this without a network.
    """
    return fetch(url, dest, sha256, progress, force=force)[0]


# ---------------------------------------------------------------------------- command line
