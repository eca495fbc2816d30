"""A headless Chromium driven over the DevTools protocol, for the tests and docs/ui/screenshots.py.

The browser is Debian's ``chromium`` (.ci/run installs it). It is started with
``--remote-debugging-pipe``: the protocol's JSON messages go over two pipes (fd 3 into the
browser, fd 4 out of it, each message ended by a NUL byte), so no port is opened and no
websocket library is needed. Standard library only.

Two ways to look at a page:

* ``Chromium.visit(url)``: open it, wait for its load event, and report what happened
  (console errors, exceptions, requests, images, a screenshot). For a static page (report.html).
* ``Chromium.open(url)`` -> ``Tab``: keep the tab open and drive it: ``evaluate`` JavaScript,
  ``wait_until`` an expression is true (a single-page app such as MLflow's UI renders long
  after its load event), ``screenshot``, ``close``.

Where Chromium is missing, ``require_chromium`` skips a test with one line saying so
(tests/needs.py), unless VERSWEEP_REQUIRE_CHROMIUM=1 makes that a failure.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

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
    from needs import need  # tests/needs.py: pytest's skip, only where a test asks

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

    def _new_tab(self, width: int, height: int) -> tuple[str, str]:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                  session=session)
        return target, session

    def open(self, url: str, *, width: int = 1400, height: int = 900,
             timeout: float = 60.0) -> Tab:
        """Open ``url`` in a new tab, wait for its load event, and keep the tab to drive."""
        target, session = self._new_tab(width, height)
        self._events = [e for e in self._events if e.get("sessionId") != session]
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session=session, timeout=timeout)
        return Tab(self, target, session)

    def visit(self, url: str, *, width: int = 1280, height: int = 2400) -> PageVisit:
        """Open ``url`` in a new tab, wait until it has loaded, and report what happened."""
        target, session = self._new_tab(width, height)
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

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Tab:
    """One open tab of a ``Chromium``: evaluate, wait, click, navigate, screenshot."""

    def __init__(self, browser: Chromium, target: str, session: str):
        self.browser, self.target, self.session = browser, target, session

    def evaluate(self, expression: str, *, timeout: float = 30.0) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        answer = self.browser.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True},
            session=self.session, timeout=timeout)
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            raise RuntimeError(f"{expression[:80]}: "
                               + details.get("exception", {}).get("description",
                                                                  details.get("text", "")))
        return answer.get("result", {}).get("value")

    def wait_until(self, expression: str, *, timeout: float = 60.0, what: str = "",
                   poll: float = 0.25) -> Any:
        """Evaluate ``expression`` until it is truthy; its value, or TimeoutError saying
        ``what`` did not appear (with the start of the page's text)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText : ''") or ""
                raise TimeoutError(f"{what or expression} did not appear in {timeout:.0f} s; "
                                   f"the page says: {' '.join(text.split())[:600]!r}")
            time.sleep(poll)

    def text(self) -> str:
        """The page's visible text."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def navigate(self, url: str, *, timeout: float = 60.0) -> None:
        """Go to ``url`` in this tab. A change of the #fragment alone is no new load, so this
        waits for the load event only where the document itself changes."""
        before = self.evaluate("location.href.split('#')[0]")
        self.browser.send("Page.navigate", {"url": url}, session=self.session)
        if url.split("#")[0] != before:
            self.browser._events = [e for e in self.browser._events
                                    if not (e.get("sessionId") == self.session
                                            and e.get("method") == "Page.loadEventFired")]
            self.browser.wait_for("Page.loadEventFired", session=self.session,
                                  timeout=timeout)

    def screenshot(self, path: Path | None = None, *, full_page: bool = False) -> bytes:
        """A PNG of the viewport (or of the whole page), written to ``path`` if given."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        shot = base64.b64decode(self.browser.send("Page.captureScreenshot", params,
                                                  session=self.session)["data"])
        if path is not None:
            Path(path).write_bytes(shot)
        return shot

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target})

    def __enter__(self) -> Tab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def file_url(path: Path) -> str:
    """The file:// URL a person's browser shows for ``path``."""
    return Path(path).resolve().as_uri()
