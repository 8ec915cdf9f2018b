"""Progress bars for long inference runs (embedding many inputs, evaluating a manifest)."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(enabled: bool | None, *, total: int | None = None, desc: str | None = None,
                 unit: str = "item") -> Any:
    """A tqdm bar on stderr, used as a context manager with ``update(n)``.

    ``enabled``: ``True`` always shows it, ``False`` never, ``None`` only when stderr is a
    terminal (tqdm's ``disable=None``); a shown bar appears only once the run has taken a second,
    so quick runs print nothing, and it is cleared when done.
    """
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None if enabled is None else not enabled,
                delay=1.0, leave=False, dynamic_ncols=True)
