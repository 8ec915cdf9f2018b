"""Timestamped window embeddings of long audio and video: where in a file something happens.

CONTRACT (issue 24) — the signatures below are what the index, search, server, HEAR and
benchmarks code against; the bodies are filled in by the implementation step.

* A **window** is a time range ``[start, end)`` in seconds of one file. Its embedding is exactly
  what ``model.embed(audio=[cut])`` (or ``video=[cut]``) gives for the clip cut out of the file
  over that range (each window normalised with its own statistics, as a short clip is), so a
  window's vector lives in the same space as any other clip's and a text query finds it.
* **Fixed windows** (``segment="fixed"``): ``window`` seconds every ``hop`` seconds from 0; the
  last window ends at the file's end (a file shorter than one window is one window, the whole
  file). **Activity windows** (``segment="onsets"``): one window per stretch of activity found by
  an energy / spectral-flux onset-offset detector on the sound (padded a little, at least the
  audio processor's ``min_seconds``, long stretches cut into ``window``-second pieces);
  ``segment="both"``: the union of the two sets.
* Decoding is **streamed**: a file is read block by block (audio) or frame by frame (video), only
  the windows in flight are held, so a 1-hour file is embedded in bounded memory.
* Windows are batched across files with the bucketing of :func:`onepeace.inference.embed`
  (no padding computed).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: default (window, hop) in seconds per modality
DEFAULT_WINDOWS: dict[str, tuple[float, float]] = {"audio": (2.0, 1.0), "video": (4.0, 2.0)}
SEGMENTS = ("fixed", "onsets", "both")


@dataclass
class WindowEmbeddings:
    """The windows of one file: ``embeddings[i]`` covers ``start[i]`` to ``end[i]`` seconds."""

    modality: str
    name: str  # the file, as errors name it
    start: np.ndarray  # [W] float64 seconds
    end: np.ndarray  # [W] float64 seconds
    embeddings: torch.Tensor  # [W, D] float32 (unit rows when normalize)
    duration: float  # seconds decoded
    #: what went wrong, one line each (e.g. "decoding stopped at 61.0 s of 3600.0 s: truncated"):
    #: the windows up to the damage are kept, the rest reported here
    problems: list[str] = field(default_factory=list)
    #: "fixed" or "onsets" per window
    kind: list[str] = field(default_factory=list)


@dataclass
class WindowBatch:
    """Some consecutive windows of one file, embedded (what :func:`iter_window_batches` yields)."""

    start: np.ndarray
    end: np.ndarray
    kind: list[str]
    embeddings: torch.Tensor


def check_windows(modality: str, window: float | None, hop: float | None, segment: str = "fixed"
                  ) -> tuple[float, float]:
    """The (window, hop) to use (defaults from :data:`DEFAULT_WINDOWS`), or one InputError line."""
    raise NotImplementedError


def iter_window_batches(model: Any, modality: str, item: Any, *, window: float | None = None,
                        hop: float | None = None, segment: str = "fixed", batch_size: int = 16,
                        skip: Any = None, problems: list[str] | None = None) -> Iterator[WindowBatch]:
    """One file's window embeddings, streamed in batches of up to ``batch_size`` windows (bounded
    memory whatever the file's length). ``skip(start, end, kind) -> bool`` leaves windows out
    (already indexed: a resumed build). Problems (truncation) are appended to ``problems``."""
    raise NotImplementedError


def embed_windows(model: Any, *, audio: Sequence[Any] | Any = None, video: Sequence[Any] | Any = None,
                  window: float | None = None, hop: float | None = None, segment: str = "fixed",
                  batch_size: int = 16, normalize: bool = True, progress: bool | None = False,
                  ) -> dict[str, list[WindowEmbeddings]]:
    """Per modality given, one :class:`WindowEmbeddings` per file, in input order."""
    raise NotImplementedError


__all__ = ["DEFAULT_WINDOWS", "SEGMENTS", "WindowBatch", "WindowEmbeddings", "check_windows", "embed_windows",
           "iter_window_batches"]
