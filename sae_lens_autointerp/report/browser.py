"""Headless Chromium for looking at the site from a script: the real-browser tests, the dashboard benchmark
and README screenshots. Uses Debian's ``chromium`` and ``chromedriver`` through Selenium (``pip install
selenium``; both in the ``dev`` extra); nothing here runs when a site is written."""

from __future__ import annotations

import shutil
from typing import Any

from ..errors import ConfigError

#: Headless, no sandbox (root in CI), and none of Chromium's background connections: on a closed network
#: they are refused many at a time and slow every start.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_paths() -> tuple[str | None, str | None]:
    """(chromium, chromedriver) on PATH, each None when missing."""
    return shutil.which("chromium"), shutil.which("chromedriver")


def chromium_driver(window: str = "1300,1800") -> Any:
    """A Selenium driver for headless Chromium that keeps the browser console (``driver.get_log("browser")``)."""
    binary, driver_path = chromium_paths()
    if not (binary and driver_path):
        raise ConfigError("chromium and chromedriver are not on PATH: apt-get install chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        raise ConfigError("selenium is not installed: pip install selenium (or the dev extra)") from err
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--window-size={window}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=opts)
