"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) under Selenium.

No browser is downloaded: Selenium is pointed at ``/usr/bin/chromedriver`` and
``/usr/bin/chromium``; without them the tests skip with the reason (CI installs both).
Screenshots go to ``$SHOAL_CONSOLE_SCREENSHOTS`` (e.g. ``docs/console``) when it is set.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium.webdriver.common.by import By

CHROMIUM = os.environ.get("SHOAL_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SHOAL_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--lang=en-US",  # the page formats times in the browser's locale: one, for the tests
)

T = TypeVar("T")


def missing_browser() -> str | None:
    """Why no browser test can run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).exists() or shutil.which(path)):
            return f"{path} not found: apt-get install chromium chromium-driver (.ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (uv sync)"
    return None


def open_chromium(
    profile: Path, width: int = 1280, height: int = 900, tz: str | None = None
) -> Any:
    """A headless Chromium with a fresh profile directory (skips the test without one);
    ``tz`` is the browser's time zone (an IANA name), else the machine's."""
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    env = {**os.environ, "TZ": tz} if tz else None
    service = Service(executable_path=CHROMEDRIVER, env=env)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    return driver


class Browser:
    """The driver's blocking calls, each run in a thread so the test's loop keeps serving.

    The thread is the browser's own: the loop's default executor is shared by every test of
    the session and by the code under test, and must not be where a browser waits.
    """

    def __init__(self, driver: Any, base: str, pool: ThreadPoolExecutor) -> None:
        self.driver = driver
        self.base = base
        self.pool = pool

    @classmethod
    @asynccontextmanager
    async def start(
        cls, profile: Path, base: str, width: int = 1280, tz: str | None = None
    ) -> AsyncIterator[Browser]:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")
        loop = asyncio.get_running_loop()
        try:
            driver = await loop.run_in_executor(pool, open_chromium, profile, width, 900, tz)
            try:
                yield cls(driver, base, pool)
            finally:
                await loop.run_in_executor(pool, driver.quit)
        finally:
            pool.shutdown(wait=False)

    async def run(self, fn: Callable[[Any], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, self.driver)

    async def get(self, path: str) -> None:
        await self.run(lambda d: d.get(self.base + path))

    async def sign_in(self, token: str) -> None:
        await self.get("/login")
        await self.fill("#token", token)
        await self.click("#sign-in")
        await self.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".who"), 10, "signed in")

    async def fill(self, css: str, text: str) -> None:
        def fill(d: Any) -> None:
            element = d.find_element(By.CSS_SELECTOR, css)
            element.clear()
            element.send_keys(text)

        await self.run(fill)

    async def click(self, css: str) -> None:
        await self.run(lambda d: d.find_element(By.CSS_SELECTOR, css).click())

    async def text(self, css: str, timeout: float = 15.0) -> str:
        """The element's text; read again if a navigation replaced it mid-read, and wait
        for it while the page a click led to is still loading (a POST, then a redirect)."""
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
        )

        def read(d: Any) -> str:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    return str(d.find_element(By.CSS_SELECTOR, css).text)
                except (StaleElementReferenceException, NoSuchElementException):
                    time.sleep(0.05)  # the page is being replaced: read the new one
            return str(d.find_element(By.CSS_SELECTOR, css).text)

        return str(await self.run(read))

    async def all(self, css: str, attribute: str) -> list[str]:
        return list(
            await self.run(
                lambda d: [
                    e.get_attribute(attribute) for e in d.find_elements(By.CSS_SELECTOR, css)
                ]
            )
        )

    async def until(self, probe: Callable[[Any], T | None], timeout: float, what: str) -> T:
        return await self.run(lambda d: until(lambda: probe(d), timeout, what))

    async def shot(self, name: str) -> None:
        await self.run(lambda d: screenshot(d, name))


def until(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``probe`` (a blocking call into the browser) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except Exception as e:  # the element is not there yet, the page is reloading…
            value, last = None, e
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout:.0f}s (last: {last!r})")
        time.sleep(interval)


def screenshot(driver: Any, name: str) -> None:
    """Save a full-page screenshot as ``<name>.png`` when screenshots are asked for."""
    target = os.environ.get("SHOAL_CONSOLE_SCREENSHOTS")
    if not target:
        return
    directory = Path(target)
    directory.mkdir(parents=True, exist_ok=True)
    size = driver.get_window_size()
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size["width"], min(max(height + 140, 600), 3000))
    driver.save_screenshot(str(directory / f"{name}.png"))
    driver.set_window_size(size["width"], size["height"])
