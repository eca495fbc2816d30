"""Image pulls say how far they are: the engine's per-layer events summed into progress lines.

tests/data/docker-pull-events.jsonl is a real pull, recorded through the docker SDK
(``client.api.pull(..., stream=True, decode=True)``) from a Debian docker-registry on
loopback (Docker engine 20.10): a three-layer image of 0.3, 6 and 20 MB, each event with
the seconds since the pull began. Played back here on a fake clock ten times slower, so
the rate limit (a line per second here) has something to limit.
"""

from __future__ import annotations

import json
from pathlib import Path

from sweeps.cluster import prepull
from sweeps.images.docker import PullProgress

RECORDED = Path(__file__).parent / "data" / "docker-pull-events.jsonl"
DIGEST = "sha256:9cba8a345297b1b08ef5156f840b5acf007b5488602e727413ddb1f6145dc618"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def recorded() -> list[tuple[float, dict]]:
    rows = [json.loads(line) for line in RECORDED.read_text().splitlines()]
    return [(row["t"] * 10, row["event"]) for row in rows]


def play(pull: PullProgress, clock: Clock, events=None) -> PullProgress:
    for at, event in events or recorded():
        clock.now = at
        pull.take(event)
    return pull


def test_the_recorded_events_have_the_docker_api_shape():
    events = [event for _, event in recorded()]
    downloading = [e for e in events if e.get("status") == "Downloading"]
    assert downloading and all(set(e["progressDetail"]) == {"current", "total"} and e["id"]
                               for e in downloading)
    assert {e["status"] for e in events} >= {"Pulling fs layer", "Downloading",
                                             "Download complete", "Extracting",
                                             "Pull complete"}


def test_a_pull_is_one_line_per_interval_summed_over_its_layers():
    clock, lines = Clock(), []
    pull = play(PullProgress("versweep:torch-2.13.0-cpu", lines.append, every=1.0,
                             clock=clock), clock)
    pull.progress.finish()

    assert lines == [
        # 2.2 s in: the 0.3 MB and 6 MB layers are down, the 20 MB one mostly.
        "versweep:torch-2.13.0-cpu: pulling, 22.4 MB of 25.1 MB (89%), 13.3 MB/s, "
        "0 of 3 layers done, extracting",
        "versweep:torch-2.13.0-cpu: pulling, 25.1 MB of 25.1 MB (100%), 1 of 3 layers done, "
        "extracting",
        "versweep:torch-2.13.0-cpu: pulling, 25.1 MB of 25.1 MB (100%), 2 of 3 layers done, "
        "extracting",
        "versweep:torch-2.13.0-cpu: pulling done, 25.1 MB in 6 s (4.3 MB/s)",
    ]
    assert pull.digest == DIGEST and pull.error is None
    assert pull.summary() == "25.1 MB in 6 s (4.3 MB/s)"


def test_a_quick_pull_says_nothing_until_its_final_line():
    clock, lines = Clock(), []
    fast = [(at / 10, event) for at, event in recorded()]  # the real 0.6 s
    pull = play(PullProgress("x", lines.append, every=1.0, clock=clock), clock, fast)
    pull.progress.finish()
    assert lines == []  # the caller's own "pulled ... in 1 s" is the whole story


def test_layer_lines_do_not_hold_back_the_byte_count():
    clock, lines = Clock(), []
    play(PullProgress("torch-2.13.0-cpu", lines.append, every=1.0, clock=clock,
                      layer_lines=True), clock)
    assert lines[:5] == [
        "torch-2.13.0-cpu: Pulling from versweep",
        "torch-2.13.0-cpu: layer b302f0c8c9c3: Pulling fs layer",
        "torch-2.13.0-cpu: layer b06186cfe758: Pulling fs layer",
        "torch-2.13.0-cpu: layer 25cc0a46740f: Pulling fs layer",
        "torch-2.13.0-cpu: layer 25cc0a46740f: Downloading (293 kB)",
    ]
    counts = [line for line in lines if ", pulling, " in line or ": pulling, " in line]
    assert len(counts) == 3, lines
    assert "torch-2.13.0-cpu: layer b06186cfe758: Pull complete" in lines
    assert sum(line.endswith(": Pull complete") for line in lines) == 3


def test_layers_already_here_count_as_done_and_an_error_ends_the_stream():
    clock, lines = Clock(), []
    events = [
        {"status": "Pulling from team/versweep", "id": "torch-2.1.0-cu121"},
        {"status": "Already exists", "progressDetail": {}, "id": "aaaaaaaaaaaa"},
        {"status": "Pulling fs layer", "progressDetail": {}, "id": "bbbbbbbbbbbb"},
        {"status": "Downloading", "progressDetail": {"current": 2**20, "total": 4 * 2**20},
         "id": "bbbbbbbbbbbb"},
        {"error": "unexpected EOF", "errorDetail": {"message": "read tcp: unexpected EOF"}},
        {"status": "Pull complete", "progressDetail": {}, "id": "bbbbbbbbbbbb"},
    ]
    pull = PullProgress("torch-2.1.0-cu121", lines.append, every=1.0, clock=clock)
    clock.now = 5.0
    pull.follow(event for event in events)
    assert pull.error == "read tcp: unexpected EOF"
    assert pull.states == {"aaaaaaaaaaaa": "Already exists", "bbbbbbbbbbbb": "Downloading"}
    assert lines == ["torch-2.1.0-cu121: pulling, 1.0 MB of 4.0 MB (25%), 205 kB/s, "
                     "1 of 2 layers done"]


class _FakeImages:
    def __init__(self, attrs):
        self.attrs = attrs

    def get(self, tag):
        import docker.errors

        if self.attrs is None:
            raise docker.errors.ImageNotFound(tag)
        return type("Image", (), {"attrs": self.attrs})()


class _FakeApi:
    def __init__(self, client, events):
        self.client, self.events = client, events

    def pull(self, repository, tag, stream, decode):
        assert stream and decode
        return iter(self.events)

    def inspect_image(self, reference):
        return {"Config": {"Labels": None}}

    def tag(self, reference, repository, tag):
        self.client.images.attrs = {"Id": "sha256:new", "RepoDigests": [
            f"{reference.rsplit(':', 1)[0]}@{DIGEST}"]}


class FakeClient:
    """The parts of the docker SDK's client a node's pre-pull uses, replaying a pull."""

    def __init__(self, events):
        self.images = _FakeImages(None)
        self.api = _FakeApi(self, events)


def test_a_nodes_pull_sends_its_progress_to_say(monkeypatch):
    # Each node's pre-pull (sweeps/cluster/prepull.py) passes its lines to `say`, which on
    # a cluster relays them to the driver; here the engine is a replay of the recording,
    # and every event is worth a line.
    monkeypatch.setenv("VERSWEEP_PROGRESS_EVERY_S", "0")
    lines = []
    client = FakeClient([event for _, event in recorded()])
    status, detail = prepull._pull_one(client, "torch-2.13.0-cpu", "127.0.0.1:5000",
                                       say=lines.append)
    assert status == prepull.PULLED
    assert detail == f"127.0.0.1:5000/versweep@{DIGEST}"
    assert lines and all(line.startswith("torch-2.13.0-cpu: pulling, ") for line in lines)
    assert lines[-1] == ("torch-2.13.0-cpu: pulling, 25.1 MB of 25.1 MB (100%), "
                         "3 of 3 layers done")
