"""Headless Chromium for the dashboard tests, driven by selenium from worker threads so the
event loop that serves the pages (and runs the worker) never blocks on the browser.

Only Debian's ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` are used; nothing is ever
downloaded. :func:`missing` says why the tests cannot run when either is absent.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDTH, HEIGHT = 1280, 800
WAIT_S = 20
MARK_PAGE = "document.documentElement.dataset.qrPage = arguments[0];"
IS_NEW_PAGE = (
    "return document.readyState === 'complete'"
    " && document.documentElement.dataset.qrPage !== arguments[0];"
)


def missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    return None


def start_driver() -> Any:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={WIDTH},{HEIGHT}",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    return webdriver.Chrome(service=service, options=options)


class Browser:
    """Async wrappers over the selenium calls a test makes, each awaiting what it needs."""

    def __init__(self, driver: Any, base: str) -> None:
        self.driver = driver
        self.base = base

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def get(self, path: str) -> None:
        await self._run(self.driver.get, self.base + path)

    def _wait(self, condition: Any) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, WAIT_S).until(condition)

    async def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        return await self._run(self._wait, ec.presence_of_element_located((By.CSS_SELECTOR, css)))

    async def text(self, css: str) -> str:
        element = await self.find(css)
        return str(await self._run(lambda: element.text))

    async def wait_text(self, css: str, text: str) -> None:
        """Until the element at ``css`` holds ``text`` (it may appear after a navigation)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        await self._run(self._wait, ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))

    async def click(self, css: str) -> None:
        """Click and wait for the page it leads to.

        The page is marked before the click and the wait ends once a loaded document without
        the mark is there. (Waiting for the clicked element to go stale raced the navigation:
        chromedriver may answer a query on a node of the unloading page with a plain
        ``WebDriverException`` rather than a stale-element error.)
        """
        mark = secrets.token_hex(8)
        await self._run(self.driver.execute_script, MARK_PAGE, mark)
        element = await self.find(css)
        await self._run(element.click)
        await self._run(self._wait_for_new_page, mark)

    def _wait_for_new_page(self, mark: str) -> None:
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.ui import WebDriverWait

        # While the old document unloads, a script may fail in several ways; each is retried.
        wait = WebDriverWait(self.driver, WAIT_S, ignored_exceptions=(WebDriverException,))
        wait.until(lambda driver: driver.execute_script(IS_NEW_PAGE, mark))

    async def fill(self, css: str, value: str) -> None:
        element = await self.find(css)
        await self._run(element.clear)
        await self._run(element.send_keys, value)

    async def source(self) -> str:
        return str(await self._run(lambda: self.driver.page_source))

    async def url(self) -> str:
        return str(await self._run(lambda: self.driver.current_url))

    async def forget(self) -> None:
        await self._run(self.driver.delete_all_cookies)

    async def login(self, token: str) -> None:
        """A fresh session: cookies are dropped first (they belong to the host, any port)."""
        await self.get("/dashboard/login")
        await self.forget()
        await self.get("/dashboard/login")
        await self.fill("#token", token)
        await self.click("#login button[type=submit]")
        await self.find("main h1")

    async def screenshot(self, path: str) -> None:
        ok = await self._run(self.driver.save_screenshot, path)
        assert ok, f"no screenshot saved to {path}"
