"""report.html opened in a real headless Chromium, as a person opens the file.

The browser is Debian's ``chromium`` (.ci/run installs it), driven over the DevTools
protocol: the page must load with no console error and no uncaught exception, ask for
nothing but itself and its embedded data: images (the report is self-contained and
must open offline), decode every <img>, and paint a screenshot that is not blank.

Chromium is started with ``--remote-debugging-pipe``: the protocol's JSON messages go
over two pipes (fd 3 into the browser, fd 4 out of it, each message ended by a NUL
byte), so no port is opened and no websocket library is needed.

Where Chromium is missing these tests are skipped with one line saying so (tests/needs.py),
unless VERSWEEP_REQUIRE_CHROMIUM=1 makes that a failure (CI must never pass by skipping them).
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from analysis_store import HPARAMS, VERSIONS
from matplotlib import image as mpimg
from needs import need
from test_report import filled_store_once

from analysis import command

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

# Flags for a quiet, isolated browser: no sandbox (tests may run as root in a container),
# no GPU process, nothing fetched in the background (updates, sync, safe browsing).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-default-apps", "--mute-audio",
                  "--hide-scrollbars", "--remote-debugging-pipe")


def chromium_path() -> str | None:
    """The Chromium executable on PATH, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The Chromium executable; skip (or fail, under VERSWEEP_REQUIRE_CHROMIUM=1) without one."""
    need("chromium")
    path = chromium_path()
    assert path is not None
    return path


class PageVisit:
    """What the browser saw while loading one page."""

    def __init__(self) -> None:
        self.console: list[dict] = []  # Runtime.consoleAPICalled and Log.entryAdded entries
        self.exceptions: list[dict] = []  # Runtime.exceptionThrown details
        self.requests: list[str] = []  # every URL the page asked for
        self.failed_requests: list[str] = []  # Network.loadingFailed
        self.images: list[dict] = []  # src (first 60 chars), complete, naturalWidth
        self.screenshot: bytes = b""  # PNG

    @property
    def errors(self) -> list[str]:
        """Console errors and uncaught exceptions, one line each."""
        lines = [f"{e.get('source', 'console')}: {e.get('text', '')}" for e in self.console
                 if e.get("level") == "error"]
        lines += [f"exception: {e.get('text', '')} {e.get('description', '')}".strip()
                  for e in self.exceptions]
        return lines


class Chromium:
    """One headless Chromium process and its DevTools pipe."""

    def __init__(self, executable: str):
        self._profile = tempfile.TemporaryDirectory(prefix="versweep-chromium-")
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def _wire_pipes() -> None:
            # In the child, before exec: DevTools reads commands on fd 3 and writes answers
            # on fd 4. Copy both ends above 10 first, so that placing one cannot overwrite
            # the other; dup2 makes 3 and 4 inheritable, everything else Python opened is
            # not (PEP 446), so with close_fds=False only these two reach the browser.
            read_end = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD_CLOEXEC, 10)
            write_end = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_wire_pipes, close_fds=False)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []

    # ----------------------------------------------------------------- protocol

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed its DevTools pipe: "
                                       + self._stderr_tail())
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _stderr_tail(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return "(still running)"
        return self.process.stderr.read().decode(errors="replace")[-2000:]

    def send(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout: float = 30.0) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message: dict = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self._events.append(answer)

    def wait_for(self, method: str, *, session: str, timeout: float = 30.0) -> dict:
        """The first event ``method`` of ``session`` (already received or still to come)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self._events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            self._events.append(self._read_message(deadline))

    # ----------------------------------------------------------------- pages

    def visit(self, url: str, *, width: int = 1280, height: int = 2400) -> PageVisit:
        """Open ``url`` in a new tab, wait until it has loaded, and report what happened."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                  session=session)
        self._events.clear()
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session=session, timeout=60)
        visit = PageVisit()
        images = self.send("Runtime.evaluate", {
            "expression": "Array.from(document.images).map(i => ({src: i.src.slice(0, 60), "
                          "complete: i.complete, naturalWidth: i.naturalWidth}))",
            "returnByValue": True}, session=session)
        visit.images = images["result"]["value"]
        shot = self.send("Page.captureScreenshot", {"format": "png"}, session=session)
        visit.screenshot = base64.b64decode(shot["data"])
        for event in self._events:
            if event.get("sessionId") != session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", "")))
                                for a in params.get("args", []))
                level = "error" if params.get("type") in ("error", "assert") else params.get(
                    "type")
                visit.console.append({"source": "console", "level": level, "text": text})
            elif method == "Log.entryAdded":
                entry = params.get("entry", {})
                visit.console.append({"source": entry.get("source"),
                                      "level": entry.get("level"), "text": entry.get("text")})
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                visit.exceptions.append({"text": details.get("text", ""), "description":
                                         details.get("exception", {}).get("description", "")})
            elif method == "Network.requestWillBeSent":
                visit.requests.append(params.get("request", {}).get("url", ""))
            elif method == "Network.loadingFailed":
                visit.failed_requests.append(params.get("errorText", ""))
        self.send("Target.closeTarget", {"targetId": target})
        return visit

    def close(self) -> None:
        """End the browser (politely, then for sure) and remove its profile."""
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.process.stderr is not None:
            self.process.stderr.close()
        self._profile.cleanup()


def file_url(path: Path) -> str:
    """The file:// URL a person's browser shows for ``path``."""
    return Path(path).resolve().as_uri()


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
