"""The host-side dataset download, against a real HTTP server on 127.0.0.1.

This machine cannot reach the internet, so the tests serve files they make
themselves and check what a user would see: verified files in the destination,
one clear line and nothing half-written when the checksum is wrong.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sweeps import datasets
from tests.conftest import ROOT

SERVED = {
    "ptb.train.txt": " the cat sat on the mat \n a dog sat \n",
    "ptb.valid.txt": " the dog sat \n",
    "ptb.test.txt": " a cat sat \n",
}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory and records the paths asked for, without logging to stderr."""

    requested: list[str] = []

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        type(self).requested.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """An http.server on a free port serving SERVED; yields (base URL, directory, requests)."""
    served = tmp_path / "served"
    served.mkdir()
    for name, text in SERVED.items():
        (served / name).write_text(text)
    handler = type("Handler", (_QuietHandler,), {"requested": []})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, handler.requested
    finally:
        httpd.shutdown()
        httpd.server_close()


def git_hash_object(path: Path) -> str:
    """What git itself says the blob id of a file is (the independent check)."""
    return subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def blob_ids_of(directory: Path) -> dict[str, str]:
    return {name: git_hash_object(directory / name) for name in SERVED}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps.datasets", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_canonical_checksums_are_the_ptb_blob_ids_of_the_seed_facts():
    assert datasets.DATASETS["ptb"].blob_ids == {
        "ptb.train.txt": "04d78dc94771b5c04adc40b3be08bd8c82942e7f",
        "ptb.valid.txt": "7b3d9d9fd705825715695328b2de872ffbc14a84",
        "ptb.test.txt": "8079cdf342f8d103e5647e1160a8fe3b58a213d5",
    }
    assert datasets.DATASETS["ptb"].base_url.startswith("https://")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git for git hash-object")
def test_download_verifies_and_writes_every_file(server, tmp_path):
    base_url, served, requested = server
    dest = tmp_path / "data" / "ptb"
    lines = []
    paths = datasets.fetch_dataset("ptb", dest, base_url=base_url,
                                   blob_ids=blob_ids_of(served), say=lines.append)

    assert sorted(p.name for p in paths) == sorted(SERVED)
    for name, text in SERVED.items():
        assert (dest / name).read_text() == text
    assert sorted(p.name for p in dest.iterdir()) == sorted(SERVED)  # no temporary files
    assert sorted(requested) == sorted("/" + name for name in SERVED)
    assert all("downloaded" in line for line in lines)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git for git hash-object")
def test_files_already_present_and_verified_are_not_downloaded_again(server, tmp_path):
    base_url, served, requested = server
    dest = tmp_path / "ptb"
    ids = blob_ids_of(served)
    datasets.fetch_dataset("ptb", dest, base_url=base_url, blob_ids=ids, say=lambda _: None)
    requested.clear()
    (dest / "ptb.test.txt").write_text("damaged\n")

    lines = []
    datasets.fetch_dataset("ptb", dest, base_url=base_url, blob_ids=ids, say=lines.append)

    assert requested == ["/ptb.test.txt"]  # only the damaged file is fetched again
    assert (dest / "ptb.test.txt").read_text() == SERVED["ptb.test.txt"]
    assert sum("already present" in line for line in lines) == 2


def test_cli_refuses_files_whose_checksum_differs_and_writes_nothing(server, tmp_path):
    # The served files are not the real PTB, so the canonical checksums cannot match.
    base_url, _, requested = server
    dest = tmp_path / "ptb"

    proc = run_cli("ptb", "--dest", str(dest), "--base-url", base_url)

    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "checksum mismatch" in lines[0] and "expected" in lines[0]
    assert "Traceback" not in proc.stderr
    assert requested, "the server was never asked: the test did not exercise the download"
    # Neither the file nor its temporary copy is left, nor the directory the command made.
    assert not dest.exists()


def test_a_mismatch_leaves_an_existing_file_untouched(server, tmp_path):
    base_url, _, _ = server
    dest = tmp_path / "ptb"
    dest.mkdir()
    (dest / "ptb.test.txt").write_text("my own file\n")

    with pytest.raises(datasets.DownloadError, match="checksum mismatch"):
        datasets.fetch_dataset("ptb", dest, base_url=base_url,
                               blob_ids={"ptb.test.txt": "0" * 40}, say=lambda _: None)

    assert (dest / "ptb.test.txt").read_text() == "my own file\n"
    assert [p.name for p in dest.iterdir()] == ["ptb.test.txt"]


def test_cli_reports_a_missing_file_on_the_server_in_one_line(server, tmp_path):
    base_url, served, _ = server
    (served / "ptb.test.txt").unlink()  # the first file asked for (sorted by name)

    proc = run_cli("ptb", "--dest", str(tmp_path / "ptb"), "--base-url", base_url)

    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot download {base_url}ptb.test.txt: HTTP 404 File not found"]


def test_cli_reports_an_unreachable_server_in_one_line(tmp_path):
    # Port 9 (discard) on 127.0.0.1: nothing listens, the connection is refused at once.
    proc = run_cli("ptb", "--dest", str(tmp_path / "ptb"), "--base-url",
                   "http://127.0.0.1:9/", "--timeout", "5")

    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot download http://127.0.0.1:9/")
    assert not list((tmp_path / "ptb").glob("*"))


def test_cli_names_the_known_datasets_for_an_unknown_one(tmp_path):
    proc = run_cli("imagenet", "--dest", str(tmp_path))

    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: dataset 'imagenet' is unknown; known datasets: ptb"


# ---------------------------------------------------------------- progress of long downloads

BIG = "ptb.train.txt"
PIECE = 64 * 1024  # the server writes the file in pieces of this size, with a pause between


class _ChunkedHandler(http.server.BaseHTTPRequestHandler):
    """Serves one file slowly, in pieces: with its Content-Length, or (``length=False``)
    without one, as a server that streams it; ``stall`` seconds of silence half-way."""

    body = b""
    pause = 0.0
    stall = 0.0
    length = True

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        if self.path != f"/{BIG}":
            self.send_error(404, "File not found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if self.length:
            self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        for start in range(0, len(self.body), PIECE):
            if self.stall and start == len(self.body) // 2:
                time.sleep(self.stall)
            self.wfile.write(self.body[start:start + PIECE])
            self.wfile.flush()
            time.sleep(self.pause)


@pytest.fixture
def slow_server():
    """(base URL, handler class): set the class's body, pause, stall, length per test."""
    handler = type("Handler", (_ChunkedHandler,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def corpus(size: int) -> bytes:
    words = b" the cat sat on the mat \n a dog sat \n"
    return (words * (size // len(words) + 1))[:size]


PROGRESS_LINE = re.compile(rf"^{re.escape(BIG)}: (\d+\.\d|\d+) kB of 512 kB \((\d+)%\), "
                           r"[\d.]+ (B|kB|MB)/s$")


def test_a_long_download_says_how_far_it_is_every_few_seconds(slow_server, tmp_path,
                                                            monkeypatch):
    base_url, handler = slow_server
    handler.body, handler.pause = corpus(512 * 1024), 0.15  # 8 pieces over about 1.2 s
    monkeypatch.setenv("VERSWEEP_PROGRESS_EVERY_S", "0.3")
    lines = []
    datasets.fetch_dataset("ptb", tmp_path, base_url=base_url,
                           blob_ids={BIG: git_blob_sha1_of(handler.body)}, say=lines.append)

    progress = [line for line in lines if PROGRESS_LINE.match(line)]
    assert len(progress) >= 2, lines  # a download of about 1.2 s, a line per 0.3 s
    percents = [int(PROGRESS_LINE.match(line).group(2)) for line in progress]
    assert percents == sorted(percents) and 0 < percents[0] and percents[-1] < 100, lines
    assert re.fullmatch(rf"{re.escape(str(tmp_path / BIG))}: downloaded 512 kB in \d s "
                        rf"\([\d.]+ kB/s\), git blob id [0-9a-f]{{40}} ok", lines[-1]), lines
    assert len(lines) == len(progress) + 1  # nothing else
    assert (tmp_path / BIG).read_bytes() == handler.body


def test_a_stalled_download_says_so_and_one_without_a_length_counts_bytes(
        slow_server, tmp_path, monkeypatch):
    base_url, handler = slow_server
    handler.body, handler.pause, handler.stall = corpus(256 * 1024), 0.0, 1.5
    handler.length = False
    monkeypatch.setenv("VERSWEEP_PROGRESS_EVERY_S", "0.4")
    lines = []
    datasets.fetch_dataset("ptb", tmp_path, base_url=base_url,
                           blob_ids={BIG: git_blob_sha1_of(handler.body)}, say=lines.append)

    # Half the file, then 1.5 s of silence: the heartbeat repeats the count, its rate 0.
    assert f"{BIG}: 128 kB, 0 B/s" in lines, lines
    assert not any("%" in line for line in lines), lines  # no length: no percentage
    assert lines[-1].startswith(f"{tmp_path / BIG}: downloaded 256 kB in 2 s ("), lines


def test_the_command_prints_progress_as_plain_lines_on_a_pipe(slow_server, tmp_path):
    base_url, handler = slow_server
    handler.body, handler.pause = corpus(512 * 1024), 0.15
    # Through the real command, with the dataset's checksums replaced by the served file's.
    script = ("import sys; from sweeps import datasets; "
              "datasets.DATASETS['ptb'] = datasets.Dataset('ptb', sys.argv[1], "
              "{'ptb.train.txt': sys.argv[2]}, 'test'); "
              "sys.exit(datasets.main(['ptb', '--dest', sys.argv[3]]))")
    done = subprocess.run([sys.executable, "-c", script, base_url,
                           git_blob_sha1_of(handler.body), str(tmp_path / "ptb")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "VERSWEEP_PROGRESS_EVERY_S": "0.3"})
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout and "\033" not in done.stdout
    lines = done.stdout.splitlines()
    assert sum(bool(PROGRESS_LINE.match(line)) for line in lines) >= 2, done.stdout
    assert lines[-1].endswith("ok") and "downloaded 512 kB" in lines[-1], done.stdout


def git_blob_sha1_of(body: bytes) -> str:
    import hashlib

    return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()
