"""The HTML report of ``batchstore load``, opened in headless Chromium: it draws its four charts from the
page alone (no request leaves it) and the screenshot shows them."""

from __future__ import annotations

import io
import json

import pytest
from peers import CHROMEDRIVER_BIN, CHROMIUM_BIN, make_corpus
from scripted_scp import ScriptedSCP

import batchstore
from batchstore.loadgen.html import write_html


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("load_report")
    corpus = make_corpus(work / "c", 2, seed=9, profile="uniform", size=1024)
    with ScriptedSCP() as scp:
        report = batchstore.load([str(p) for p in corpus.paths()], "127.0.0.1", scp.port, concurrency=(1, 2),
                                 duration=0.6, warmup=0.1)  # fmt: skip
    page = work / "report.html"
    write_html(report, str(page))
    return report, page


def test_report_page_is_self_contained(report_page) -> None:
    report, page = report_page
    text = page.read_text()
    for attribute in ("src=", "href=", "@import", "url(http", "<script", "<link"):
        assert attribute not in text, attribute
    assert text.count("<svg") == 4
    assert f"{report.levels[1].stores_per_s:.1f}" in text  # the table carries the figures
    # the JSON carries every figure, the raw histogram included
    path = page.with_suffix(".json")
    report.write_json(str(path))
    data = json.loads(path.read_text())
    from hdrh.histogram import HdrHistogram

    hist = HdrHistogram.decode(data["levels"][0]["histogram"])
    assert hist.get_total_count() == data["levels"][0]["completed"] > 0


@pytest.mark.needs_chromium
def test_report_renders_in_headless_chromium_without_network(report_page, tmp_path) -> None:
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    _report, page = report_page
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM_BIN
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1800",
                "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER_BIN), options=options)
    try:
        driver.get(page.as_uri())
        charts = driver.execute_script(
            "return Array.from(document.querySelectorAll('svg.pygal-chart')).map(s => {"
            " const r = s.getBoundingClientRect();"
            " return [r.width, r.height, s.querySelectorAll('path.line').length]; });"
        )
        png = driver.get_screenshot_as_png()
        requests = [
            json.loads(entry["message"])["message"]["params"]["request"]["url"]
            for entry in driver.get_log("performance")
            if json.loads(entry["message"])["message"]["method"] == "Network.requestWillBeSent"
        ]
        console = [entry["message"] for entry in driver.get_log("browser")]
    finally:
        driver.quit()
    assert len(charts) == 4, charts
    for width, height, lines in charts:
        assert width > 300 and height > 200 and lines >= 1, charts
    assert page.as_uri() in requests, requests
    # the browser's own pages (its new tab) load chrome:// resources; nothing goes to a network
    network = [
        u
        for u in requests
        if not u.startswith(("file://", "chrome://", "chrome-untrusted://", "about:", "data:"))
    ]
    assert not network and [u for u in requests if u.startswith("file://")] == [page.as_uri()], requests
    assert not [m for m in console if "Refused" in m or "violates" in m or "ERR_" in m], console
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    not_white = sum(count for count, rgb in colours if rgb != (255, 255, 255))
    assert len(colours) > 50 and not_white > 0.03 * image.width * image.height, (len(colours), not_white)
    (tmp_path / "report.png").write_bytes(png)
