"""The host-side dataset download, against a real HTTP server on 127.0.0.1.

This machine cannot reach the internet, so the tests serve files they make
themselves and check what a user would see: verified files in the destination,
one clear line and nothing half-written when the checksum is wrong.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import sys
import threading
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
    assert list(dest.iterdir()) == []  # neither the file nor its temporary copy is left


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
