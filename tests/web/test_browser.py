"""`kbot web` in a real headless Chromium (Debian's chromium + chromium-driver, via selenium),
over a store filled by a real pipeline run and a real bisection (tests/web/world.py).

One browser session for the module. Screenshots of the series and bisection pages land in
each test's output folder (its tmp_path).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urldefrag, urlsplit

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from bot.state import Store
from tests.web.world import (
    BISECT_CULPRIT,
    BISECT_TEST,
    HOSTILE_FILE,
    HOSTILE_TITLE,
    WebWorld,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
UA = {"User-Agent": "kbot-web-tests"}
# Computed background colours of the matrix cells (templates/web/style.css).
COLOURS = {
    "pass": "rgb(200, 230, 201)",
    "fail": "rgb(255, 205, 210)",
    "flaky": "rgb(255, 224, 178)",
    "skip": "rgb(238, 238, 238)",
    "none": "rgb(250, 250, 250)",
}
MAX_PAGES = 400


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            pytest.fail(f"{path} missing: .ci/install-system-packages installs chromium and "
                        "chromium-driver")
    profile = tempfile.mkdtemp(prefix="kbot-web-chromium-")
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1300,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _cells(driver: WebDriver, test: str) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, f'#matrix td.cell[data-test="{test}"]')


def _bg(driver: WebDriver, el: WebElement) -> str:
    return str(driver.execute_script("return getComputedStyle(arguments[0]).backgroundColor", el))


def _verdict_counts(world: WebWorld, series_id: int, test: str) -> list[str]:
    """fail:runs of `test` at the base and after each patch, as the stored verdict has them."""
    with Store.in_state_dir(world.state_dir) as store:
        job = store.job_for_series(series_id, "test-series")
        assert job is not None
        verdict = store.web_step(job.id, "verdict")
    assert verdict is not None
    entry = next(t for t in verdict.data["tests"] if t["test"] == test)
    return [entry["base"], *entry["patches"]]


def _no_alert(driver: WebDriver) -> None:
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - raises when no script opened a dialog


def test_series_list_and_matrix(browser: WebDriver, web_server: str, web_world: WebWorld,
                                tmp_path: Path) -> None:
    browser.get(web_server + "/")
    rows = {r.get_attribute("data-series"): r.text
            for r in browser.find_elements(By.CSS_SELECTOR, "#series tr[data-series]")}
    assert len(rows) == 4
    assert "regressed" in rows[str(web_world.regress_series)]
    assert "2/3 KVM: nSVM: Rework nested state restore" in rows[str(web_world.regress_series)]
    assert "build-failed" in rows[str(web_world.nobuild_series)]
    # the filters narrow the list (a GET form: no write)
    browser.get(web_server + "/?outcome=regressed")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#series tr[data-series]")) == 1

    browser.get(f"{web_server}/series/{web_world.regress_series}")
    assert browser.find_element(By.ID, "first-bad").text == "2"
    test = f"{BISECT_TEST} [qemu-tcg]"
    cells = _cells(browser, test)
    # the labels are the fail:runs the job's verdict counted (and its report printed)
    assert [c.text for c in cells] == _verdict_counts(web_world, web_world.regress_series, test)
    assert [c.get_attribute("data-state") for c in cells] == ["pass", "pass", "fail", "fail"]
    assert [_bg(browser, c) for c in cells] == [COLOURS["pass"]] * 2 + [COLOURS["fail"]] * 2
    for other in ("boot [qemu-tcg]", "smm_test [qemu-tcg]"):
        assert [c.get_attribute("data-state") for c in _cells(browser, other)] == ["pass"] * 4
    first_bad = browser.find_element(By.CSS_SELECTOR, "#matrix tr.first-bad")
    assert first_bad.get_attribute("data-index") == "2"
    # every cell links to the console of a boot of its commit; a failing cell to a failing boot
    link = cells[2].find_element(By.TAG_NAME, "a").get_attribute("href")
    assert link is not None and "/console?boot=boot%3A" in link
    browser.save_screenshot(str(tmp_path / "series.png"))
    browser.get(link)
    outcome = browser.find_element(By.XPATH, f'//table[@id="results"]//tr[td[1]="{BISECT_TEST}"]')
    assert "FAIL" in outcome.text
    assert "KBOT_FAKE" not in browser.find_element(By.ID, "log").text  # the console, not the image

    # A flaky cell (one boot passed, one failed) and the build failure of a series.
    browser.get(f"{web_server}/series/{web_world.clean_series}")
    cells = _cells(browser, test)
    assert cells[-1].text == "1:2" and cells[-1].get_attribute("data-state") == "flaky"
    assert _bg(browser, cells[-1]) == COLOURS["flaky"]
    href = cells[-1].find_element(By.TAG_NAME, "a").get_attribute("href") or ""
    assert web_world.flaky_key.replace(":", "%3A") in href  # the boot that failed
    browser.get(f"{web_server}/series/{web_world.nobuild_series}")
    build = browser.find_elements(By.CSS_SELECTOR, "#matrix tr[data-index='1'] .badge")
    assert build[0].text == "fail"
    assert {c.get_attribute("data-state") for c in _cells(browser, test)[1:]} == {"none"}
    _no_alert(browser)


def test_bisection_page(browser: WebDriver, web_server: str, web_world: WebWorld,
                        tmp_path: Path) -> None:
    browser.get(f"{web_server}/bisect/{web_world.bisect_job}")
    assert browser.find_element(By.ID, "verdict").text.startswith("found")
    culprit = browser.find_element(By.ID, "culprit").text
    assert web_world.bisect_culprit in culprit and f"step {BISECT_CULPRIT}" in culprit
    # the line: one dot per tested commit (and the endpoints), untested stretches folded
    dots = browser.find_elements(By.CSS_SELECTOR, "#line circle.commit")
    tested = browser.find_elements(By.CSS_SELECTOR, "#tested tr")[1:]
    assert len(dots) == len(tested)
    assert browser.find_elements(By.CSS_SELECTOR, "#line circle.commit.skip"), "the skipped commit"
    assert browser.find_elements(By.CSS_SELECTOR, "#line text.gap")
    # the posterior: one bar per candidate, the culprit's the one highlighted and the tallest
    bars = browser.find_elements(By.CSS_SELECTOR, "#posterior rect.bar")
    assert len(bars) == 24
    heights = [float(b.get_attribute("height") or 0) for b in bars]
    tallest = bars[heights.index(max(heights))]
    assert tallest.get_attribute("fill") == "#6a1b9a"
    assert [b.get_attribute("fill") for b in bars].count("#6a1b9a") == 1
    top = browser.find_element(By.CSS_SELECTOR, "#candidates tr:nth-child(2)").text
    assert top.startswith(web_world.bisect_culprit[:12])
    assert "git bisect start" in browser.find_element(By.ID, "replay").text
    browser.save_screenshot(str(tmp_path / "bisection.png"))


def test_test_history_and_jobs(browser: WebDriver, web_server: str, web_world: WebWorld) -> None:
    browser.get(web_server + "/tests")
    browser.find_element(By.LINK_TEXT, f"{BISECT_TEST} [qemu-tcg]").click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#history tr")[1:]
    assert len(rows) == 4  # every series job ran it
    dots = browser.find_elements(By.CSS_SELECTOR, "svg.sparkline circle, svg.sparkline rect")
    assert len(dots) == 4
    fills = [d.get_attribute("fill") for d in dots]
    assert "#c62828" in fills  # the regression lowered the pass rate once
    assert "new" in " ".join(r.text for r in rows)
    browser.get(web_server + "/jobs")
    counts = browser.find_element(By.ID, "counts").text
    assert "done 5" in counts
    bisections = browser.find_element(By.ID, "bisections").text
    assert f"bisect {BISECT_TEST}" in bisections


def test_every_link_resolves(browser: WebDriver, web_server: str) -> None:
    """Crawl from the series list: every same-origin link answers 200 (pages are followed in
    the browser, downloads fetched), and no page has a broken link."""
    origin = urlsplit(web_server).netloc
    seen: set[str] = set()
    todo = [web_server + "/"]
    pages = downloads = 0
    session = requests.Session()
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        assert len(seen) < MAX_PAGES, "the crawl did not end"
        r = session.get(url, timeout=30, headers=UA)
        assert r.status_code == 200, f"{url}: {r.status_code}"
        if not r.headers["content-type"].startswith("text/html"):
            downloads += 1
            continue
        pages += 1
        browser.get(url)
        for a in browser.find_elements(By.CSS_SELECTOR, "a[href], link[href]"):
            href = urldefrag(a.get_attribute("href") or "")[0]
            if urlsplit(href).netloc == origin and href not in seen:
                todo.append(href)
    assert pages > 20 and downloads > 5  # series, boots, builds, artifacts, bisection, tests


def test_hostile_content_is_inert(browser: WebDriver, web_server: str,
                                  web_world: WebWorld) -> None:
    browser.get(f"{web_server}/series/{web_world.hostile_series}")
    assert browser.find_element(By.ID, "title").text == f"v1 {HOSTILE_TITLE}"
    assert browser.execute_script("return document.scripts.length") == 0
    # no markup from the subject: its <b>bold</b> is text, not an element
    assert [b.text for b in browser.find_elements(By.TAG_NAME, "b")].count("bold") == 0
    _no_alert(browser)
    browser.get(web_server + "/")
    assert HOSTILE_TITLE in browser.find_element(By.ID, "series").text
    assert browser.execute_script("return document.scripts.length") == 0

    # the guest's escape sequences are shown as symbols, never passed to the page
    browser.get(f"{web_server}/jobs/{web_world.console_job}/console?boot="
                f"{web_world.console_key}&run=0")
    log = browser.find_element(By.ID, "log").text
    assert "\u241b[31mRED\u241b[0m" in log and "<script>alert(2)</script>" in log
    assert "\x1b" not in log and "\x07" not in log
    assert browser.execute_script("return document.scripts.length") == 0

    # an artifact with markup in its name: listed as text, its link works, its body is text
    browser.get(f"{web_server}/jobs/{web_world.console_job}")
    link = browser.find_element(By.PARTIAL_LINK_TEXT, "onerror")
    assert link.text == HOSTILE_FILE
    assert not browser.find_elements(By.CSS_SELECTOR, "main img")
    link.click()
    assert browser.find_element(By.ID, "log").text == "<script>alert(3)</script>"
    assert browser.execute_script("return document.scripts.length") == 0
    _no_alert(browser)
