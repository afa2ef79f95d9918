"""report.html in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven
by Selenium) opens the page from disk, offline, and every image decodes, the console stays free
of errors and every section is there. The screenshot is kept as a test artifact
($CATDOG_TEST_ARTIFACTS, else test-artifacts/ in the checkout).

Locally: `apt-get install chromium chromium-driver`, then `python -m pytest -m slow
tests/test_report.py`. Without a browser the test is skipped, except in CI (CI=true), where
.ci/run installs one and its absence is a failure."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from catdog import evaluate, export, report
from catdog import model as model_lib

pytestmark = pytest.mark.slow

ARTIFACTS = Path(os.environ.get("CATDOG_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "test-artifacts"))
BROWSER = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
               None)
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (BROWSER and DRIVER):
        message = "needs Chromium and its driver: apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    yield driver
    driver.quit()


def look_at(driver, page: Path) -> dict:
    """Opens `page` and returns what a person would notice: each image's decoded width, the
    console's errors, the section ids."""
    driver.get(page.as_uri())
    return {
        "widths": driver.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)"),
        "errors": [entry["message"] for entry in driver.get_log("browser")
                   if entry["level"] == "SEVERE"],
        "sections": driver.execute_script(
            "return Array.from(document.querySelectorAll('section[id]')).map(s => s.id)"),
    }


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """report.html of a small model against a baseline from another run, on generated photos
    (each model's mistakes explained)."""
    from conftest import write_split

    root = tmp_path_factory.mktemp("report")
    photos = write_split(root / "photos", 8, seed=6)
    paths = {}
    for seed in (3, 4):
        keras.utils.set_random_seed(seed)
        model = model_lib.build_classifier(2, 32, "none")
        paths[seed] = export.export_all(model, ("cats", "dogs"), root / f"run{seed}", "catdog")
    content = evaluate.evaluate(str(paths[3].h5), str(photos), str(root / "out"),
                                baseline=str(paths[4].saved_model), max_explained=4)
    return root / "out" / "report.html", content


def test_the_report_opens_offline_with_every_image_decoded_and_no_console_error(browser,
                                                                                evaluated):
    page, content = evaluated
    seen = look_at(browser, page)
    assert seen["errors"] == []
    assert len(seen["widths"]) >= 6 and all(width > 0 for width in seen["widths"])
    headline = report.SECTIONS.index("headline") + 1  # the comparison comes right after it
    assert seen["sections"] == [*report.SECTIONS[:headline], report.COMPARISON,
                                *report.SECTIONS[headline:]]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1200, height + 100)
    assert browser.save_screenshot(str(ARTIFACTS / "report.png"))


def test_the_checks_catch_a_broken_image_and_a_console_error(browser, tmp_path):
    """The checks above can fail: a missing image and a script error are both seen."""
    page = tmp_path / "broken.html"
    page.write_text('<html><body><section id="x"><img src="missing.png"></section>'
                    "<script>undefinedFunction()</script></body></html>")
    seen = look_at(browser, page)
    assert seen["widths"] == [0]
    assert any("undefinedFunction" in error for error in seen["errors"])
    assert seen["sections"] == ["x"]


def test_an_undefined_figure_is_null_in_json_and_undefined_on_the_page(tmp_path):
    """Photos of one class only: ROC AUC is undefined. report.json (strict JSON, no NaN token)
    holds null; the page and report.md say undefined; the figures that are defined keep
    intervals that hold them."""
    from catdog import data, evaluation

    from conftest import write_split

    folder = write_split(tmp_path / "photos", 4, seed=2)
    files = data.list_images(folder, ("cats", "dogs")).subset(range(4))  # the cats only
    answers = np.tile([0.7, 0.3], (4, 1))
    result = evaluation.model_result("model", tmp_path / "model.h5", ("cats", "dogs"), answers,
                                     np.array(files.labels))
    content = report.write_reports(tmp_path / "out", result, evaluation.Photos(files, "photos"))
    written = (tmp_path / "out" / "report.json").read_text()
    assert "NaN" not in written and json.loads(written)["roc_auc"] is None
    assert content["accuracy"] == 1.0
    low, high = content["intervals"]["accuracy"]
    assert low <= 1.0 <= high
    page = (tmp_path / "out" / "report.html").read_text()
    assert "undefined" in page and ">nan" not in page.lower()
    assert "| ROC AUC (one-vs-rest, mean) | undefined |" in (tmp_path / "out" / "report.md"
                                                            ).read_text()


def test_class_names_with_dollar_signs_are_drawn_as_written(tmp_path):
    """Folder names like `$\\frac{$` are not valid mathtext; matplotlib would stop the report
    (and the gate) on them. They are drawn as plain text."""
    import numpy as np

    from catdog import report

    names = ["$\\frac{$", "dog$s"]
    assert report.confusion_plot(np.eye(2, dtype=int), names).startswith("data:image/png")
