"""serve.py's page in a real headless Chromium: upload a photo of real faces, see the annotated picture and table.

Needs Debian's chromium and chromium-driver (.ci/run installs them where apt-get can) and selenium;
skips without them.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from test_serve import PLACEMENTS, group_photo, server  # noqa: F401 (pytest fixtures)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1000,900"]


def open_browser(profile: Path):
    """Headless Chromium driven by chromedriver, with a fresh profile; no network beyond what the page asks."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def upload_and_wait(driver, url: str, photo: Path) -> str:
    """Open the page, pick the photo, and wait for the status line; returns its text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    driver.find_element(By.ID, "file").send_keys(str(photo))
    status = driver.find_element(By.ID, "status")
    WebDriverWait(driver, 60).until(lambda _: status.text and not status.text.startswith("Looking at"))
    return status.text


@pytest.fixture
def browser():
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    driver = open_browser(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_page_shows_the_annotated_photo_and_a_row_per_face(browser, server, group_photo):  # noqa: F811
    from selenium.webdriver.common.by import By

    assert upload_and_wait(browser, server, group_photo) == f"{len(PLACEMENTS)} faces in group.jpg"
    picture = browser.find_element(By.ID, "annotated")
    assert picture.is_displayed()
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", picture) == 1000
    rows = browser.find_elements(By.CSS_SELECTOR, "#faces tbody tr")
    assert len(rows) == len(PLACEMENTS) and browser.find_element(By.ID, "faces").is_displayed()
    for row in rows:
        cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        assert cells[3] in ("female", "male") and 0 <= float(cells[1]) <= 100 and len(cells[5].split(",")) == 4


def test_page_shows_the_error_of_a_bad_upload(browser, server, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    assert upload_and_wait(browser, server, notes) == "notes.jpg: not an image this tool can read"
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
    assert not browser.find_element(By.ID, "annotated").is_displayed()
