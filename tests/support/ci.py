"""Whether the tests run under CI, where a missing backend is a broken setup, not a skip."""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Values of CI that mean "not CI"; anything else set (true, 1, yes, a CI system's name) is CI.
_FALSY = frozenset({"", "0", "false", "no", "off"})


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """True for any truthy CI value (``CI=true``, ``CI=1``, ``CI=yes``, …)."""
    return environ.get("CI", "").strip().lower() not in _FALSY


IN_CI = in_ci()
