"""The chat UI in a real browser: Debian's Chromium, headless, driven by Selenium.

The app runs on a free loopback port over a Baokan whose temporary index holds
the repo's seeds/; the test types questions like a user and reads the page.
Screenshots go to test-artifacts/ for a human to look at.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
QUESTION = "How many technical innovation suggestions did Hongqiao District employees put forward?"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(seeds_app: Any) -> Iterator[str]:
    """The app on a free loopback port, over the session's seeds index (conftest.seeds_app)."""
    from ui.app import build_app, style_kwargs

    assert seeds_app.index.counts()["articles"] == 5
    demo = build_app(seeds_app, llm="extractive")
    port = _free_port()
    # prevent_thread_lock: the server runs in Gradio's background thread.
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        footer_links=[],
        **style_kwargs(),
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture()
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="baokan-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1300",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _open(driver: Any, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#question textarea")))
    # The load event reports the index; wait for it so the page is settled.
    WebDriverWait(driver, 60).until(lambda d: "Index:" in d.find_element(By.ID, "status").text)


def _ask(driver: Any, question: str) -> float:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.CSS_SELECTOR, "#question textarea")
    box.clear()
    box.send_keys(question)
    t0 = time.perf_counter()
    driver.find_element(By.ID, "ask").click()
    return t0


def _set(driver: Any, elem_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input, #{elem_id} textarea")
    field.clear()
    field.send_keys(value)


def _wait_final(driver: Any, timeout: float = 120) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, '#sources[data-phase="final"], #sources[data-phase="empty"]')
            and "Answered in" in d.find_element(By.ID, "status").text
        )
    )


def test_asks_and_shows_cited_bilingual_sources(server: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(browser, server)
    t0 = _ask(browser, QUESTION)
    WebDriverWait(browser, 120, poll_frequency=0.05).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#sources .src-card")
    )
    first_source = time.perf_counter() - t0
    _wait_final(browser)
    full_answer = time.perf_counter() - t0
    print(f"\nbrowser extractive: first source {first_source:.2f} s, full answer {full_answer:.2f} s")

    answer = browser.find_element(By.CSS_SELECTOR, "#chat .answer").text
    assert "200,000" in answer or "二十多万" in answer, answer
    cites = browser.find_elements(By.CSS_SELECTOR, "#chat a.cite")
    assert cites, "the answer has no clickable [n] marker"
    assert "Hongqiao" in (cites[0].get_attribute("title") or "")
    assert (cites[0].get_attribute("href") or "").endswith("#src-1")

    card = browser.find_element(By.ID, "src-1")
    text = card.text
    assert "Hongqiao District" in text and "1959-11-24" in text and "p. 2" in text
    assert "天津红桥区组织全区工厂开展技术革新大协作" in text
    en = card.find_element(By.CSS_SELECTOR, ".quote-en").text
    zh = card.find_element(By.CSS_SELECTOR, ".quote-zh").text
    assert "technical innovation suggestions" in en
    assert "技术革新建议" in zh
    marks = card.find_elements(By.TAG_NAME, "mark")
    assert marks and any(m.text.strip() for m in marks), "the supporting sentence is not highlighted"

    cites[0].click()  # jumps to the card instead of leaving the page
    assert browser.current_url.rstrip("/") == server.rstrip("/")
    card.find_element(By.CSS_SELECTOR, "details.full summary").click()
    full = card.find_element(By.CSS_SELECTOR, "details.full").text
    assert "Tianjin Vehicle Factory" in full and "天津市车辆厂" in full

    ARTIFACTS.mkdir(exist_ok=True)
    browser.find_element(By.ID, "chat").location_once_scrolled_into_view  # noqa: B018 - scrolls
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(ARTIFACTS / "ui-answer.png"))


def test_date_filter_matching_nothing_says_so(server: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, server)
    _set(browser, "date-from", "2001-01-01")
    _set(browser, "date-to", "2001-12-31")
    _ask(browser, QUESTION)
    _wait_final(browser)
    answer = browser.find_element(By.CSS_SELECTOR, "#chat .answer").text
    assert "does not say" in answer
    assert not browser.find_elements(By.CSS_SELECTOR, "#sources .src-card")
    assert "No article matches" in browser.find_element(By.ID, "sources").text
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "ui-empty.png"))


def test_bad_filter_is_a_readable_message(server: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(browser, server)
    _set(browser, "date-from", "1959-13-40")
    _ask(browser, QUESTION)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chat .error"))
    msg = browser.find_element(By.CSS_SELECTOR, "#chat .error").text
    assert "Bad from date" in msg and "YYYY-MM-DD" in msg
    assert "Traceback" not in browser.page_source
