"""Remove a worker's container once the trial process that started it is gone.

    python -m sweeps.execute.backends.reaper CONTAINER_ID     (started by the docker backend)

It blocks reading its stdin, whose other end only the trial process holds: the kernel
closes that end when the trial process exits, however it exits (SIGKILL of a Ray
actor included), and the reaper then removes the container with ``force``. After a
normal trial the backend has removed the container itself, and the reaper finds
nothing to do.
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m sweeps.execute.backends.reaper CONTAINER_ID", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the trial, not for us
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except OSError:
        pass
    import docker
    import docker.errors

    try:
        client = docker.from_env(timeout=60)
        client.containers.get(argv[0]).remove(force=True)
    except docker.errors.NotFound:
        return 0  # the backend removed it already
    except docker.errors.DockerException as exc:
        print(f"reaper: could not remove container {argv[0][:12]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
