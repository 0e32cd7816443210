"""Paths shared by the tests."""
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parent.parent  # the checkout
REAL = TOP.parent/'shared'/'mirex-dev'/'dataset'  # the real 150-song subset, where present
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason='real MIREX subset not present (../shared/mirex-dev)')
