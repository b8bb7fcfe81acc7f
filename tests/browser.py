"""A real headless browser for the dashboard's tests: Debian's chromium through chromium-driver
(scripts/setup.sh installs both; selenium is in the test extra). `browser` is the fixture (tests/conftest.py)."""

from __future__ import annotations

import time

from tests.integration.conftest import need


def start():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = need("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(need("chromedriver")), options=opts)
    driver.set_page_load_timeout(30)
    return driver


def wait(driver, find, timeout: float = 20.0):
    """find(driver) until it gives something truthy (a page that re-renders may drop elements meanwhile)."""
    from selenium.common.exceptions import StaleElementReferenceException

    end = time.monotonic() + timeout
    while True:
        try:
            got = find(driver)
            if got:
                return got
        except StaleElementReferenceException:
            pass
        assert time.monotonic() < end, f"not on the page within {timeout} s:\n{driver.page_source[-3000:]}"
        time.sleep(0.1)


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)
