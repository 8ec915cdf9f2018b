"""``python -m onepeace.cli ...`` (as ``torchrun ... -m onepeace.cli pretrain ...`` runs it)."""

import sys

from . import main

sys.exit(main())
