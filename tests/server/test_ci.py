"""Under CI a missing backend fails the run: every truthy CI value counts, not only ``true``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.ci import in_ci
from tests.support.servers import ROOT


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes", "on", "github-actions"])
def test_a_truthy_ci_value_is_ci(value: str) -> None:
    assert in_ci({"CI": value})


@pytest.mark.parametrize("value", ["", "0", "false", "False", "no", "off"])
def test_an_unset_or_falsy_ci_value_is_not_ci(value: str) -> None:
    assert not in_ci({"CI": value})
    assert not in_ci({})


def test_under_ci_1_an_unreachable_postgresql_fails_instead_of_skipping() -> None:
    # A real pytest run against a PostgreSQL nobody listens on: it must fail, not skip.
    env = {
        **os.environ,
        "CI": "1",
        "TEST_PG_DSN": "postgresql://postgres@127.0.0.1:1/postgres",
        "TEST_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/server/test_smoke.py",
            "-k",
            "postgres",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0, result.stdout
    assert "a missing backend is a failure" in result.stdout, result.stdout


def test_the_channels_tests_honour_test_redis_url() -> None:
    env = {**os.environ, "TEST_REDIS_URL": "redis://127.0.0.1:1/0", "CI": "yes"}
    result = subprocess.run(
        [sys.executable, "-c", "from tests.channels.helpers import REDIS_URL; print(REDIS_URL)"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "redis://127.0.0.1:1/0", result.stderr
