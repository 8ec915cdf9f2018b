"""Adapters to the harnesses other people score embedding models with.

* :mod:`onepeace.integrations.mteb`: ``OnePeaceEncoder``, an encoder for MTEB (text, image, audio,
  video tasks), and a loader so ``mteb.get_model``-style use works on a model directory or hub id;
* :mod:`onepeace.integrations.sentence_transformers`: a onepeace model directory loaded with
  ``SentenceTransformer(...)``;
* :mod:`onepeace.hear` (beside this package): the HEAR API for audio representations.

None of them is imported by ``import onepeace``; each imports its harness when it is imported itself,
and a missing harness is one line naming the extra to install (``pip install 'onepeace[mteb]'``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MissingDependencyError


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise a one-line :class:`MissingDependencyError` naming ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name is not None and e.name.split(".")[0] != module.split(".")[0]:
            raise  # the harness is there but one of its own imports fails: its message says which
        raise MissingDependencyError(f"{what} needs the {module} package: pip install 'onepeace[{extra}]'") from None
