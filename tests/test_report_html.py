"""report.html opened in a real headless Chromium, as a person opens the file.

The browser is Debian's ``chromium`` (.ci/run installs it), driven over the DevTools
protocol (tests/chromium.py): the page must load with no console error and no uncaught
exception, ask for nothing but itself and its embedded data: images (the report is
self-contained and must open offline), decode every <img>, and paint a screenshot that is
not blank.

Where Chromium is missing these tests are skipped with one line saying so (tests/needs.py),
unless VERSWEEP_REQUIRE_CHROMIUM=1 makes that a failure (CI must never pass by skipping them).
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from analysis_store import HPARAMS, VERSIONS
from chromium import Chromium, file_url, require_chromium
from matplotlib import image as mpimg
from test_report import filled_store_once

from analysis import command

# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def chromium():
    browser = Chromium(require_chromium())
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return filled_store_once(tmp_path_factory)


def pixels(png: bytes) -> np.ndarray:
    """The screenshot as an array of RGB(A) values in 0..1."""
    return mpimg.imread(io.BytesIO(png), format="png")


def test_the_harness_sees_broken_images_console_errors_and_blank_pages(chromium, tmp_path):
    # The checks below are only worth something if they can fail: a page with a missing
    # image, a console error and an exception, and an empty page, must all be caught.
    (tmp_path / "broken.html").write_text(
        '<html><body><p>text</p><img src="missing.png">'
        '<script>console.error("boom"); notAFunction();</script></body></html>')
    visit = chromium.visit(file_url(tmp_path / "broken.html"))
    assert [i["naturalWidth"] for i in visit.images] == [0]
    assert any("boom" in e for e in visit.errors)
    assert any("notAFunction" in e for e in visit.errors)
    assert any(url.endswith("/missing.png") for url in visit.requests)

    (tmp_path / "blank.html").write_text("<html><body></body></html>")
    blank = pixels(chromium.visit(file_url(tmp_path / "blank.html")).screenshot)
    assert blank.std() == 0.0


@pytest.mark.parametrize("experiment", [VERSIONS, HPARAMS])
def test_report_html_loads_cleanly_in_chromium(chromium, store, tmp_path, experiment):
    assert command.main(["--experiment", experiment, "--tracking-uri", store.tracking_uri,
                        "--out", str(tmp_path), "--format", "html", "--no-log"]) == 0
    page = tmp_path / "report.html"
    # Moved away from everything else it could reach: a self-contained file still works.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.move(str(page), alone / "report.html")

    visit = chromium.visit(file_url(alone / "report.html"))

    assert visit.errors == []
    assert visit.failed_requests == []
    own_url = file_url(alone / "report.html")
    assert {url for url in visit.requests if not url.startswith("data:")} == {own_url}
    assert len(visit.images) >= (8 if experiment == VERSIONS else 1)
    assert all(i["complete"] and i["naturalWidth"] > 0 for i in visit.images), visit.images
    assert all(i["src"].startswith("data:image/png;base64,") for i in visit.images)

    shot = pixels(visit.screenshot)
    assert shot.shape[0] > 1000 and shot.shape[1] >= 1280
    # Not blank: text, tables and figures give many distinct shades over the page.
    assert shot.std() > 0.05
    rows_with_ink = (shot[:, :, :3].min(axis=2) < 0.5).any(axis=1).mean()
    assert rows_with_ink > 0.2
