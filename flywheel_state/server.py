"""The embedded Redis Stack for development and tests (moved to :mod:`flywheel_state.devserver`).

This module re-exports the dev server's public names so existing imports keep working.
"""

from __future__ import annotations

from flywheel_state.devserver import *  # noqa: F403
from flywheel_state.devserver import __all__ as __all__
