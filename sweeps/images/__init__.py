"""The Docker images of images/matrix.toml: the engine (docker.py) and `versweep images`
(build.py: list, build, pull, verify, push)."""
