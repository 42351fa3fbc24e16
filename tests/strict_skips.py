"""No test skips quietly into a green run: in CI (``CI=true``) and ``make test``
(``AIAYN_STRICT_TESTS=1``) a skipped test fails, saying why it skipped, unless the person running
the suite asked for it with an ``AIAYN_SKIP_*`` variable (e.g. AIAYN_SKIP_BROWSER=1). A missing
Bible corpus, transformers or ctranslate2 then fails the run instead of leaving parts untested.

conftest.py registers the hook; tests/test_strict_skips.py runs it on a suite of its own.
"""

from __future__ import annotations

import os

import pytest

STRICT = os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("AIAYN_STRICT_TESTS") == "1"
ON_PURPOSE = "AIAYN_SKIP_"  # in the reason of a skip someone asked for


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if ON_PURPOSE not in reason:
            report.outcome = "failed"
            report.longrepr = (
                f"skipped, which CI and `make test` do not allow ({reason}); make what it needs "
                f"available, or set the test's {ON_PURPOSE}* variable to skip it on purpose"
            )
