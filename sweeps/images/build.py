"""Build, pull, verify and mirror the Docker images of images/matrix.toml.

    python images/build.py list                          # the matrix, and what this node has
    python images/build.py pull torch-1.13.1-cu117       # its base tag from Docker Hub ...
    python images/build.py build torch-1.13.1-cu117      # ... then versweep:torch-1.13.1-cu117
    python images/build.py verify all                    # torch, CUDA, cuDNN as the matrix says?
    python images/build.py push cuda --registry registry.example.com:5000/team
    python images/build.py pull --grid versions --registry registry.example.com:5000/team

Images are named by matrix name, by a selector (``all``, ``cuda``, ``cpu``) or by
``--grid NAME`` (the images a grid runs). Every node runs ``versweep:<name>``; a registry is
only how images travel: ``push`` mirrors them to ``<registry>/versweep:<name>`` and
``pull --registry`` fetches them back on a cluster node and tags them ``versweep:<name>``
once their io.versweep.* labels (torch, Python, CUDA, cuDNN) agree with the matrix.

Exit codes: 0 done; 1 a build, pull, push or verification failed, or a mirror's labels
differ from the matrix (what and why is printed); 2 bad input (a usage error, unknown
image, malformed registry, missing local image, no Docker daemon), as one line
``build.py: error: ...``.

Host side: never imports torch. ``verify`` runs the ``env`` workload in each image
through the real docker backend, exactly as a sweep runs a trial.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from sweeps.columns import format_columns
from sweeps.errors import EXIT_FAILED, EXIT_OK, UserError, run_command
from sweeps.grid.matrix import (
    env_differences,
    load_matrix,
    select_entries,
)
from sweeps.grid.spec import Image
from sweeps.images.docker import (
    REPOSITORY,
    PullProgress,
    check_registry,
    docker_client,
    engine_error,
    local_tag,
    mirror_verdict,
    registry_tag,
)
from sweeps.paths import MATRIX_PATH

IMAGES_DIR = MATRIX_PATH.parent
DEFAULT_MATRIX = MATRIX_PATH

# Output lines of a failing build step shown with its error.
BUILD_TAIL_LINES = 25
# The most one `verify` container may take: the env workload imports torch and runs a
# tiny LSTM, seconds on any node.
VERIFY_TIMEOUT_S = 600


# ---------------------------------------------------------------- choosing images


def select_images(matrix: dict[str, Image], names: Sequence[str], grid: str | None,
                  matrix_path: Path) -> list[Image]:
    """The matrix images named by ``names`` (names or selectors) and ``--grid``, in matrix order."""
    chosen = {image.name for image in select_entries(
        matrix, names, matrix_path, hint="python images/build.py list shows them all")}
    if grid is not None:
        from sweeps.grid.load import load_sweep

        sweep = load_sweep(grid, matrix_path=matrix_path)
        if not sweep.images:
            raise UserError(f"grid '{grid}' runs on the {sweep.backend} backend and names no "
                            "images of the matrix")
        chosen.update(image.name for image in sweep.images)
    return [image for name, image in matrix.items() if name in chosen]


def arch_summary(image: Image) -> str:
    """The architectures as TORCH_CUDA_ARCH_LIST spells them: '3.5 5.2 7.0+PTX'."""
    def spelled(arch: str) -> str:
        digits = "".join(c for c in arch if c.isdigit())
        return f"{digits[:-1]}.{digits[-1]}" + ("a" if arch.endswith("a") else "")

    words = [spelled(a) for a in image.archs]
    for arch in image.ptx:
        word = spelled(arch)
        if word in words:
            words[words.index(word)] = word + "+PTX"
        else:
            words.append(word + "+PTX")
    return " ".join(words) or "-"


def build_args(image: Image, base: str | None = None) -> dict[str, str]:
    """images/Dockerfile's build arguments for a matrix entry (``base`` overrides its base)."""
    return {
        "BASE_IMAGE": base or image.base,
        "IMAGE_NAME": image.name,
        "TORCH_VERSION": image.torch,
        "PYTHON_VERSION": image.python,
        "CUDA_VERSION": image.cuda or "",
        "CUDNN_VERSION": image.cudnn or "",
        "GPU_ARCHS": " ".join(image.archs),
        "GPU_PTX": " ".join(image.ptx),
        "TORCH_INDEX_URL": image.torch_index_url,
    }


def _local_image(client: Any, tag: str) -> Any | None:
    """The docker SDK image tagged ``tag`` on this node, or None."""
    import docker.errors

    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise UserError(f"the Docker daemon failed to look up {tag}: "
                        f"{exc.explanation or exc}") from None


def _require_local(client: Any, images: Iterable[Image], action: str) -> None:
    """A UserError naming every image that is not on this node, before doing anything."""
    missing = [image.name for image in images if _local_image(client, local_tag(image.name))
               is None]
    if missing:
        raise UserError(f"cannot {action} {', '.join(local_tag(n) for n in missing)}: not on "
                        f"this node; build or pull it first (python images/build.py build "
                        f"{' '.join(missing)})")


# ---------------------------------------------------------------- list


def list_images(images: Sequence[Image], out: TextIO, err: TextIO) -> int:
    """Print the matrix as a table, with whether ``versweep:<name>`` is on this node."""
    try:
        client = docker_client(timeout=10)
    except UserError as exc:
        client = None
        print(f"note: {exc}; the 'local' column is '?'", file=err)
    rows = []
    for image in images:
        if client is None:
            local = "?"
        else:
            found = _local_image(client, local_tag(image.name))
            local = f"yes {found.short_id.split(':')[-1]}" if found is not None else "no"
        rows.append((image.name, image.torch, image.python, image.cuda or "-",
                     image.cudnn or "-", arch_summary(image), image.base, local))
    print(format_columns(["name", "torch", "python", "cuda", "cudnn", "archs", "base",
                          "local"], rows), file=out)
    return EXIT_OK


# ---------------------------------------------------------------- progress of pulls and pushes


def _stream(label: str, events: Iterable[dict[str, Any]], out: TextIO, *,
            doing: str = "pulling") -> PullProgress:
    """Follow the engine's pull or push stream: a line per layer that changes state, and
    the bytes moved over all layers every few seconds (sweeps/images/docker.py)."""
    def say(line: str) -> None:
        print(line, file=out, flush=True)

    return PullProgress(label, say, doing=doing, layer_lines=True).follow(events)


_api_error = engine_error  # the engine's words in one line (shared with the pre-pull)


# ---------------------------------------------------------------- pull


def _mirror_is_the_entry(client: Any, image: Image, reference: str, out: TextIO) -> bool:
    """Whether the pulled mirror's io.versweep.* labels agree with the matrix entry.

    A mirror pushed from an older matrix (another torch, Python, CUDA or cuDNN) would
    otherwise run as versweep:<name> and record wrong facts. An image without the labels
    (not built by images/Dockerfile) cannot be checked here: a warning, then ``verify``.
    The cluster pre-pull judges through the same sweeps.images.docker.mirror_verdict.
    """
    accepted, said = mirror_verdict(client, image, reference)
    if said:
        print(f"{image.name}: {said}", file=out, flush=True)
    return accepted


def pull_images(images: Sequence[Image], registry: str | None, out: TextIO) -> int:
    """Pull each image from ``registry`` as versweep:<name>, or (no registry) its base tag."""
    import docker.errors

    registry = check_registry(registry) if registry is not None else None
    client = docker_client(timeout=None)  # a pull may be silent for long
    failed = 0
    for image in images:
        if registry is not None:
            reference = registry_tag(registry, image.name)
        else:
            reference = image.base
        repository, tag = reference.rsplit(":", 1)
        print(f"pulling {reference}", file=out, flush=True)
        try:
            progress = _stream(image.name, client.api.pull(repository, tag=tag, stream=True,
                                                           decode=True), out)
        except docker.errors.APIError as exc:
            print(f"{image.name}: pulling {reference} failed: {_api_error(exc)}", file=out)
            failed += 1
            continue
        if progress.error:
            print(f"{image.name}: pulling {reference} failed: {progress.error}", file=out)
            failed += 1
            continue
        if registry is not None:
            if not _mirror_is_the_entry(client, image, reference, out):
                failed += 1
                continue
            try:
                client.api.tag(reference, REPOSITORY, image.name)
            except docker.errors.APIError as exc:
                print(f"{image.name}: pulled {reference}, but tagging it "
                      f"{local_tag(image.name)} failed: {_api_error(exc)}", file=out)
                failed += 1
                continue
            print(f"{image.name}: pulled {reference} ({progress.digest or 'no digest'}) "
                  f"{progress.summary()}, tagged {local_tag(image.name)}",
                  file=out, flush=True)
        else:
            print(f"{image.name}: pulled base {reference} ({progress.digest or 'no digest'}) "
                  f"{progress.summary()}; now make {local_tag(image.name)} with: "
                  f"python images/build.py build {image.name}", file=out, flush=True)
    return EXIT_FAILED if failed else EXIT_OK


def _ensure_base(client: Any, image: Image, base: str, out: TextIO) -> bool:
    """The base image on this node, pulled with progress when missing; False if that failed."""
    import docker.errors

    if _local_image(client, base) is not None:
        return True
    repository, tag = base.rsplit(":", 1) if ":" in base.rsplit("/", 1)[-1] else (base, "latest")
    print(f"{image.name}: base {base} is not on this node; pulling it", file=out, flush=True)
    try:
        progress = _stream(image.name, client.api.pull(repository, tag=tag, stream=True,
                                                       decode=True), out)
    except docker.errors.APIError as exc:
        progress = PullProgress(image.name, print)
        progress.error = _api_error(exc)
    if progress.error:
        print(f"{image.name}: cannot get the base {base}: {progress.error} (mirror it, or "
              "build on another base with --base TAG)", file=out)
        return False
    return True


# ---------------------------------------------------------------- build


def build_image(client: Any, image: Image, *, base: str | None, no_cache: bool,
                verbose: bool, out: TextIO) -> bool:
    """Build versweep:<name> from images/Dockerfile; True when it was built."""
    import docker.errors

    args = build_args(image, base)
    if not _ensure_base(client, image, args["BASE_IMAGE"], out):
        return False
    print(f"{image.name}: building {local_tag(image.name)} FROM {args['BASE_IMAGE']}",
          file=out, flush=True)
    started = time.monotonic()
    step = ""
    tail: collections.deque[str] = collections.deque(maxlen=BUILD_TAIL_LINES)
    image_id = None
    error = None
    try:
        for chunk in client.api.build(path=str(IMAGES_DIR), dockerfile="Dockerfile",
                                      tag=local_tag(image.name), buildargs=args,
                                      nocache=no_cache, rm=True, forcerm=True, pull=False,
                                      decode=True):
            if chunk.get("error"):
                error = str(chunk.get("errorDetail", {}).get("message") or chunk["error"])
                break
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = str(aux["ID"])
            for line in str(chunk.get("stream") or "").splitlines():
                if line.startswith("Step "):
                    step = line
                    tail.clear()
                    print(f"{image.name}: {line[:140]}", file=out, flush=True)
                elif line.startswith("found torch ") and not verbose:
                    # What the Dockerfile found in the base: worth seeing in every build.
                    tail.append(line)
                    print(f"{image.name}:   {line}", file=out, flush=True)
                elif line.strip():
                    tail.append(line)
                    if verbose:
                        print(f"{image.name}:   {line}", file=out, flush=True)
    except docker.errors.APIError as exc:
        error = _api_error(exc)
    if error is None and image_id is None:
        error = "the engine's build stream ended without an image"
    if error is not None:
        # The engine repeats the whole RUN command in its message; the step line says it.
        why = error.split("returned a non-zero code:")[-1].strip()
        if "returned a non-zero code:" in error:
            why = f"the command exited with code {why}"
        for line in tail:
            print(f"{image.name}:   | {line}", file=out)
        print(f"{image.name}: build failed at {step[:100] or 'the start'}: {why}",
              file=out, flush=True)
        return False
    assert image_id is not None
    print(f"{image.name}: built {local_tag(image.name)} ({image_id.split(':')[-1][:12]}) in "
          f"{time.monotonic() - started:.0f} s", file=out, flush=True)
    return True


def build_images(images: Sequence[Image], *, base: str | None, no_cache: bool,
                 verbose: bool, out: TextIO) -> int:
    """Build every image; all are tried, the exit code says whether any failed."""
    client = docker_client(timeout=None)  # a build step may be silent for long
    failed = [image.name for image in images
              if not build_image(client, image, base=base, no_cache=no_cache, verbose=verbose,
                                 out=out)]
    if failed:
        print(f"build failed for {', '.join(failed)}", file=out)
        return EXIT_FAILED
    return EXIT_OK


# ---------------------------------------------------------------- verify


def verify_images(images: Sequence[Image], *, gpu: str | None, out: TextIO) -> int:
    """Run the env workload in each image (the real docker backend) and compare with the matrix."""
    from sweeps.execute.backends.docker import DockerBackend
    from sweeps.execute.trial import run_trial
    from sweeps.grid.spec import TrialSpec

    backend = DockerBackend({image.name: image for image in images})
    _require_local(backend.client, images, "verify")
    bad = 0
    with tempfile.TemporaryDirectory(prefix="versweep-verify-") as logs:
        for image in images:
            # A CPU-only image is verified on the CPU even with --gpu: it has no CUDA to use.
            on_gpu = gpu is not None and image.cuda is not None
            device = "cuda" if on_gpu else "cpu"
            gpu_ids = [str(gpu)] if on_gpu else []
            spec = TrialSpec(workload="env", image=image.name, config=(("device", device),),
                             repeat=0, group=0)
            outcome = run_trial(backend, spec, gpu_ids=gpu_ids, timeout_s=VERIFY_TIMEOUT_S,
                                retries=0, log_dir=Path(logs))
            if outcome.status != "ok" or not outcome.env:
                first = (outcome.message.strip().splitlines() or ["no message"])[0]
                print(f"{image.name}: the env workload did not run in {local_tag(image.name)} "
                      f"({outcome.status}: {first})", file=out, flush=True)
                tail = outcome.log_text().strip().splitlines()[-8:]
                for line in tail:
                    print(f"{image.name}:   | {line}", file=out)
                bad += 1
                continue
            differences = env_differences(image, outcome.env)
            if differences:
                print(f"{image.name}: " + "; ".join(differences), file=out, flush=True)
                bad += 1
            else:
                env = outcome.env
                cuda = f"CUDA {env['cuda']}, cuDNN {env['cudnn']}" if env.get("cuda") \
                    else "no CUDA"
                where = f", on {env['gpu']}" if env.get("gpu") else ""
                print(f"{image.name}: ok (torch {env['torch']}, Python {env['python']}, "
                      f"{cuda}{where}; {outcome.tags.get('versweep.image_id', '')[:19]})",
                      file=out, flush=True)
    if bad:
        print(f"verify: {bad} of {len(images)} image(s) differ from "
              "the matrix or did not run", file=out)
        return EXIT_FAILED
    return EXIT_OK


# ---------------------------------------------------------------- push


def _untag(client: Any, tag: str) -> None:
    import docker.errors

    try:
        client.images.remove(tag)
    except docker.errors.APIError:
        pass


def push_images(images: Sequence[Image], registry: str, out: TextIO) -> int:
    """Tag versweep:<name> as <registry>/versweep:<name> and push it, with progress."""
    import docker.errors

    registry = check_registry(registry)
    client = docker_client(timeout=None)
    _require_local(client, images, "push")
    failed = 0
    for image in images:
        target = registry_tag(registry, image.name)
        repository = target.rsplit(":", 1)[0]
        client.api.tag(local_tag(image.name), repository, image.name)
        print(f"pushing {local_tag(image.name)} to {target}", file=out, flush=True)
        try:
            progress = _stream(image.name, client.api.push(repository, tag=image.name,
                                                           stream=True, decode=True), out,
                               doing="pushing")
        except docker.errors.APIError as exc:
            print(f"{image.name}: pushing to {target} failed: {_api_error(exc)}", file=out)
            _untag(client, target)
            failed += 1
            continue
        if progress.error or not progress.digest:
            print(f"{image.name}: pushing to {target} failed: "
                  f"{progress.error or 'the registry sent no digest'}", file=out)
            _untag(client, target)  # leave no tag that claims a mirror exists
            failed += 1
            continue
        print(f"{image.name}: pushed {target}@{progress.digest} {progress.summary()}",
              file=out, flush=True)
    return EXIT_FAILED if failed else EXIT_OK


# ---------------------------------------------------------------- command line


class _ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2, like every other user error.

    Subcommand parsers are made by the top parser's class, so they raise it too.
    """

    top = "build.py"  # the top parser's prog; a subcommand's is "<top> <command>"
    hint = "python images/build.py"  # how a user asks for help (both set by parser())

    def error(self, message: str) -> NoReturn:
        # Name the subcommand, if it is one, and its own --help.
        command = self.prog[len(self.top):].strip()
        raise UserError(f"{command + ': ' if command else ''}{message} (see "
                        f"{self.hint} {command + ' ' if command else ''}--help)")


def parser(prog: str = "build.py") -> argparse.ArgumentParser:
    _ArgumentParser.top = prog
    _ArgumentParser.hint = "python images/build.py" if prog == "build.py" else prog
    top = _ArgumentParser(
        prog=prog,
        description="Build, pull, verify and mirror the Docker images of images/matrix.toml. "
                    "Images are named by matrix name, by 'all', 'cuda' or 'cpu', or by "
                    "--grid NAME (the images a grid runs).")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("names", nargs="*", metavar="IMAGE",
                         help="matrix image names, or all / cuda / cpu")
        sub.add_argument("--grid", metavar="NAME",
                         help="the images this grid runs (a name of sweeps/grids or a path)")
        sub.add_argument("--matrix", default=str(DEFAULT_MATRIX), metavar="PATH",
                         help="the image matrix (default: images/matrix.toml)")
        return sub

    command("list", "the matrix as a table, and whether versweep:<name> is on this node "
                    "(default: all images)")
    build = command("build", "build versweep:<name> from images/Dockerfile")
    build.add_argument("--base", metavar="TAG",
                       help="build FROM this image instead of the matrix's base (a mirror, or "
                            "a local base with the same torch and Python)")
    build.add_argument("--no-cache", action="store_true", help="rebuild every step")
    build.add_argument("--verbose", "-v", action="store_true",
                       help="show every output line of the build, not only its steps")
    pull = command("pull", "pull R/versweep:<name> as versweep:<name> (with --registry), or "
                           "the base tag of each image from Docker Hub (then build)")
    pull.add_argument("--registry", metavar="R",
                      help="your registry holding images pushed by 'push', host[:port][/path]")
    pull.add_argument("--cluster", metavar="ADDRESS",
                      help="pull on every alive node of this running Ray cluster (its GCS "
                           "address HEAD:6379, or auto on one of its nodes), one Ray task "
                           "pinned to each node, and report per node; needs --registry")
    verify = command("verify", "run the env workload in each image and compare torch, "
                               "Python, CUDA, cuDNN (and GPU architectures) with the matrix")
    verify.add_argument("--gpu", nargs="?", const="0", metavar="INDEX",
                        help="run on this GPU (default 0) and check the architectures too; "
                             "without it verify runs on the CPU")
    push = command("push", "mirror versweep:<name> to R/versweep:<name> for a cluster")
    push.add_argument("--registry", metavar="R", required=True,
                      help="your registry, host[:port][/path] (no scheme)")
    return top


def run(argv: Sequence[str] | None = None, out: TextIO | None = None,
        err: TextIO | None = None, prog: str = "build.py") -> int:
    """Parse ``argv`` and run the command; UserError propagates (main prints it)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    args = parser(prog).parse_args(argv)
    matrix_path = Path(args.matrix)
    matrix = load_matrix(matrix_path)
    names = args.names or (["all"] if args.command == "list" and args.grid is None else [])
    if not names and args.grid is None:
        raise UserError(f"{args.command}: name the images (matrix names, or all / cuda / cpu) "
                        "or give --grid NAME")
    images = select_images(matrix, names, args.grid, matrix_path)
    if args.command == "list":
        return list_images(images, out, err)
    if args.command == "build":
        return build_images(images, base=args.base, no_cache=args.no_cache,
                            verbose=args.verbose, out=out)
    if args.command == "pull":
        if args.cluster is not None:
            if args.registry is None:
                raise UserError("pull --cluster needs --registry R, the mirror the nodes pull "
                                "from; to only check the nodes: python -m "
                                "sweeps.cluster.prepull --address ADDRESS IMAGE...")
            from sweeps.cluster.prepull import pull_on_cluster

            return pull_on_cluster(args.cluster, [image.name for image in images],
                                   registry=args.registry, matrix_path=matrix_path, out=out)
        return pull_images(images, args.registry, out)
    if args.command == "verify":
        return verify_images(images, gpu=args.gpu, out=out)
    return push_images(images, args.registry, out)


def main(argv: Sequence[str] | None = None, prog: str = "build.py") -> int:
    """``versweep images`` / ``python images/build.py``: run, one line per user error."""
    return run_command(prog, lambda: run(argv, prog=prog))


