"""A command's files moved into its --out folder together, or not at all.

    with staged_output(out_dir) as stage:
        stage.file("report.md").write_text(...)
        stage.file("plots/a.png").write_bytes(...)
        stage.discard("plots/stale.png")      # a file of out_dir this output replaces
    files = stage.written                     # their paths in out_dir, in the order asked

Used by ``versweep report`` (analysis/render.py) and ``versweep join`` (analysis/join.py).
The files are written first into a hidden staging folder beside ``out_dir`` (the same
parent, so the same file system); then every destination is checked (no folder where a
file goes, no file where a folder goes, a folder that can be written), and only then is
each file moved into place with os.replace. ``out_dir`` may hold other files (a README,
evidence): they are kept, as ``out_dir`` is never replaced as a whole. A failed check, or
a failure while writing, is one UserError line and leaves ``out_dir`` as it was; the
staging folder is removed in every case.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sweeps.errors import UserError


class Stage:
    """The staging folder of one output, and what is to move from it into ``out_dir``."""

    def __init__(self, root: Path, out_dir: Path):
        self.root = root
        self.out_dir = out_dir
        self.asked: list[Path] = []  # relative paths, in the order the caller asked for them
        self.discarded: list[Path] = []  # relative paths of out_dir's files to remove
        self.written: list[Path] = []  # after the move: the files' paths in out_dir

    def file(self, relative: str | Path) -> Path:
        """Where to write the file that goes to ``out_dir / relative`` (its folder made)."""
        relative = Path(relative)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"{relative}: not a path inside the output folder")
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if relative not in self.asked:
            self.asked.append(relative)
        return path

    def discard(self, relative: str | Path) -> None:
        """Remove ``out_dir / relative`` (a file of an earlier output) when the files move in."""
        self.discarded.append(Path(relative))


@contextmanager
def staged_output(out_dir: Path) -> Iterator[Stage]:
    """Stage the files of one output; move them into ``out_dir`` when the block ends without
    an error (see the module's docstring). UserError for anything in the way."""
    target = Path(os.path.abspath(out_dir))
    created = _make_parents(target.parent, out_dir)
    staging: Path | None = None
    try:
        staging = _staging_dir(target, out_dir)
        stage = Stage(staging, out_dir)
        try:
            yield stage
        except OSError as exc:  # the disk's: full, read-only, gone
            raise UserError(f"cannot write {out_dir}: {exc.strerror or exc}; nothing was "
                            "changed there") from None
        moves = _moves(stage)
        _check(moves, target, out_dir)
        _move(moves, stage, target, out_dir)
        created = []  # out_dir's parents now hold it: kept
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):  # made for the staging folder alone: gone again
            try:
                folder.rmdir()
            except OSError:
                break


def _make_parents(parent: Path, shown: Path) -> list[Path]:
    """Make ``parent`` and the folders above it that are missing; return those made."""
    missing = []
    folder = parent
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    made = []
    try:
        for folder in reversed(missing):
            folder.mkdir()
            made.append(folder)
    except OSError as exc:
        for folder in reversed(made):
            folder.rmdir()
        raise UserError(f"cannot write {shown}: cannot make the folder {folder} "
                        f"({exc.strerror or exc})") from None
    return made


def _staging_dir(target: Path, shown: Path) -> Path:
    """A new hidden folder beside ``target`` (the same file system); inside ``target``
    where its parent cannot be written but ``target`` can."""
    name = f".{target.name or 'out'}.staging-"
    try:
        return Path(tempfile.mkdtemp(prefix=name, dir=target.parent))
    except OSError as beside:
        if target.is_dir():
            try:
                return Path(tempfile.mkdtemp(prefix=".staging-", dir=target))
            except OSError:
                pass
        raise UserError(f"cannot write {shown}: {beside.strerror or beside}") from None


def _moves(stage: Stage) -> list[Path]:
    """Every staged file, relative: those asked for in their order, then any others."""
    found = sorted(path.relative_to(stage.root) for path in stage.root.rglob("*")
                   if path.is_file() or path.is_symlink())
    return ([p for p in stage.asked if (stage.root / p).is_file()]
            + [p for p in found if p not in stage.asked])


def _check(moves: list[Path], target: Path, shown: Path) -> None:
    """Every destination can take its file: a UserError naming the first that cannot."""
    folders: set[Path] = set()
    for relative in moves:
        destination = target / relative
        if destination.is_dir():
            raise UserError(f"cannot write {shown / relative}: it is a folder where the file "
                            f"{relative} goes; move it away or choose another --out; nothing "
                            f"was changed in {shown}")
        folder = destination.parent
        while True:
            folders.add(folder)
            if folder == target or folder.parent == folder:
                break
            folder = folder.parent
    for folder in sorted(folders):
        if os.path.lexists(folder) and not folder.is_dir():
            raise UserError(f"cannot write into {_shown(folder, target, shown)}: it is a file "
                            f"where a folder goes; move it away or choose another --out; "
                            f"nothing was changed in {shown}")
    for parent in sorted({(target / relative).parent for relative in moves}):
        nearest = parent  # the folder the file goes in, or the one its folders are made in
        while not nearest.exists() and nearest.parent != nearest:
            nearest = nearest.parent
        if not os.access(nearest, os.W_OK | os.X_OK):
            raise UserError(f"cannot write into {_shown(nearest, target, shown)}: permission "
                            f"denied; choose another --out; nothing was changed in {shown}")


def _shown(path: Path, target: Path, shown: Path) -> Path:
    """``path`` as the user named the output folder (``out/plots``, not its absolute path)."""
    try:
        return shown / path.relative_to(target)
    except ValueError:
        return path


def _move(moves: list[Path], stage: Stage, target: Path, shown: Path) -> None:
    try:
        for relative in moves:
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage.root / relative, destination)
            stage.written.append(shown / relative)
        for relative in stage.discarded:
            path = target / relative
            if (shown / relative) not in stage.written and (path.is_symlink()
                                                             or path.is_file()):
                path.unlink()
    except OSError as exc:  # checked above: a race with another process, or the disk
        raise UserError(f"cannot move the files into {shown}: {exc.strerror or exc} "
                        f"({len(stage.written)} of {len(moves)} moved)") from None
