"""A missing browser fails the browser tests with the reason; only OMOST_SKIP_BROWSER=1 skips them."""

from __future__ import annotations

import pytest

from tests.playground import browser


def test_a_missing_chromium_fails_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(browser.SKIP_ENV, raising=False)
    monkeypatch.setattr(browser, "CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(pytest.fail.Exception, match=r"/nonexistent/chromium is missing: apt-get install chromium"):
        browser.require_chromium()


def test_the_opt_out_skips_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(browser.SKIP_ENV, "1")
    monkeypatch.setattr(browser, "CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(pytest.skip.Exception, match="OMOST_SKIP_BROWSER=1"):
        browser.require_chromium()
