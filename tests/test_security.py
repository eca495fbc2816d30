"""Security (issue 14): secrets never reach the records, nor the console in the clear.

A real sweep records into a real ``mlflow server`` reached through a URI that carries
credentials (``http://user:TOKEN@127.0.0.1:PORT``), with MLflow's own credential variables,
a cloud secret and a versweep variable all set to distinctive secrets in the driver's
environment. Then every byte the store holds (the server's SQLite file, every artifact
file under its artifact root, every run's params, tags and metrics read through MLflow's
client) is searched for each secret: none may be there. The console may show the URI
only with its password starred.
"""

from __future__ import annotations

import base64
from pathlib import Path

from sweeping import ROOT, env_grid, running_mlflow_server, versweep

from sweeps.records.store import _without_password

URI_SECRET = "S3CRETURITOKEN9f1c"
SECRETS = {
    "MLFLOW_TRACKING_PASSWORD": "S3CRETMLFLOWPASSWORDa7e2",
    "MLFLOW_TRACKING_TOKEN": "S3CRETMLFLOWTOKENb8d3",
    "AWS_SECRET_ACCESS_KEY": "S3CRETAWSKEYc9e4",
    "VERSWEEP_TEST_SECRET": "S3CRETVERSWEEPd0f5",
}


def every_form(secret: str) -> list[bytes]:
    """The secret as it might be stored: plain, URL-quoted is the same (alphanumeric),
    and as the base64 of an HTTP Basic header (``user:secret``)."""
    return [secret.encode(), base64.b64encode(f"user:{secret}".encode())]


def test_a_sweep_through_a_token_bearing_uri_writes_no_secret_anywhere(tmp_path, ray_tmp):
    home = tmp_path / "server"
    home.mkdir()
    with running_mlflow_server(home, home / "mlflow.db") as url:
        uri = url.replace("http://", f"http://user:{URI_SECRET}@")
        grid = tmp_path / "secret.toml"
        grid.write_text(env_grid("secret", [1]))
        # MLflow's client sends Basic auth from the URI's user:password (requests does) and
        # a bearer token from MLFLOW_TRACKING_TOKEN; a server without auth ignores both.
        # MLFLOW_TRACKING_USERNAME/PASSWORD would override the URI's: set the password
        # only, to the URI's user, so both reach the server.
        done = versweep(["--grid", str(grid), "--tracking-uri", uri,
                         "--experiment", "secrets"], cwd=tmp_path, ray_tmp=ray_tmp,
                        MLFLOW_TRACKING_USERNAME="user", **SECRETS)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

        # The console: the URI only with its password starred.
        console = done.stdout + done.stderr
        for secret in [URI_SECRET, *SECRETS.values()]:
            assert secret not in console, (secret, console[-3000:])
        # The driver took the credentials out of the URI (into MLflow's variables).
        assert f"at {url}\n" in done.stdout

        # Every run's params, tags and metrics, through MLflow's own client.
        from mlflow.tracking import MlflowClient
        client = MlflowClient(tracking_uri=url)
        experiment = client.get_experiment_by_name("secrets")
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        assert len(runs) == 2  # the sweep and its one trial
        texts = [str(experiment.tags)]
        for run in runs:
            texts += [str(run.data.params), str(run.data.tags), str(run.data.metrics),
                      str(run.info)]
        everything = "\n".join(texts)
        for secret in [URI_SECRET, *SECRETS.values()]:
            assert secret not in everything, secret

        # The report of the sweep, written through the same URI.
        import subprocess
        import sys
        report = tmp_path / "report"
        made = subprocess.run(
            [sys.executable, str(ROOT / "analysis" / "report.py"), "--tracking-uri", uri,
             "--experiment", "secrets", "--out", str(report)],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
            env={**__import__("os").environ, **SECRETS})
        for secret in [URI_SECRET, *SECRETS.values()]:
            assert secret not in made.stdout + made.stderr, secret

    # Every byte the store holds: the database, its journal, every artifact (worker.log,
    # environment.txt, the grid, metrics.json ...), the report's files, the working dir.
    files = [p for p in home.rglob("*") if p.is_file() and p.name != "server.log"]
    files += [p for p in report.rglob("*") if p.is_file()] if report.exists() else []
    files += [p for p in tmp_path.iterdir() if p.is_file()]
    # Ray Tune's experiment state (what --resume restores from) and the Ray session's
    # own files (logs, runtime environments) of the sweep's private Ray.
    files += [p for p in (tmp_path / "ray_results").rglob("*") if p.is_file()]
    files += [p for p in Path(ray_tmp).rglob("*") if p.is_file() and not p.is_socket()]
    names = {p.name for p in files}
    # environment.txt is the venv backend's (its pip freeze): this sweep runs locally.
    assert "mlflow.db" in names and "worker.log" in names
    assert "secret.toml" in names  # the grid, as the parent run's artifact
    for path in files:
        data = Path(path).read_bytes()
        for secret in [URI_SECRET, *SECRETS.values()]:
            for form in every_form(secret):
                assert form not in data, (secret, str(path))


def test_every_url_shown_has_its_password_starred():
    from sweeps import validate
    from sweeps.records.store import mlflow_ui_command, records_location

    uri = f"https://alice:{URI_SECRET}@mlflow.example.org:5000/base"
    for shown in (_without_password(uri), validate.shown(uri), records_location(uri),
                  mlflow_ui_command(uri), validate.without_password(f"see {uri} and {uri}")):
        assert URI_SECRET not in shown, shown
    assert _without_password(uri) == "https://alice:***@mlflow.example.org:5000/base"
    assert mlflow_ui_command(uri) == "open https://mlflow.example.org:5000/base"
    # A token in the query string or fragment is starred too; other parameters stay.
    for query in (f"?token={URI_SECRET}&x=1", f"?sslmode=require&password={URI_SECRET}",
                  f"?X-Amz-Signature={URI_SECRET}", f"#access_token={URI_SECRET}",
                  f"?API_KEY={URI_SECRET};other=2"):
        for shown in (validate.without_password(f"see https://host/p{query} now"),
                      validate.shown(f"https://host/p{query}"), records_location(
                          f"https://host/p{query}")):
            assert URI_SECRET not in shown and "***" in shown, shown
    assert validate.without_password("https://h/p?token=abc&x=1&keyboard=2") == (
        "https://h/p?token=***&x=1&keyboard=2")
    with __import__("pytest").raises(validate.InputError) as error:
        validate.url(f"ftp://alice:{URI_SECRET}@host:1/", "--tracking-uri")
    assert URI_SECRET not in str(error.value)
    from sweeps.errors import UserError
    from sweeps.records.location import resolve_tracking_uri
    with __import__("pytest").raises(UserError) as error:
        resolve_tracking_uri(f"postgres2://alice:{URI_SECRET}@host/db", Path("."))
    assert URI_SECRET not in str(error.value) and "alice:***@" in str(error.value)


def test_credentials_leave_the_uri_for_mlflows_own_variables(monkeypatch):
    from sweeps.records.store import credentials_to_environment

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    import os
    assert credentials_to_environment(f"http://bob:{URI_SECRET}@h:5000/x") == "http://h:5000/x"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "bob"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == URI_SECRET
    assert credentials_to_environment("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"
    assert credentials_to_environment("http://h:5000") == "http://h:5000"


# ------------------------------------------------------------------ Ray's token authentication

RAY_TOKEN = "5ecre7raytoken0123456789abcdef0123456789abcdef0123456789abcdef01"


def _driver_env(home: Path, **extra: str) -> dict[str, str]:
    """A driver's environment with no Ray token of its own (HOME has no ~/.ray/auth_token)."""
    from loopback_cluster import cluster_env

    env = cluster_env()
    env.pop("RAY_AUTH_MODE", None)
    env["HOME"] = str(home)
    env.update(extra)
    return env


def test_a_cluster_with_token_authentication_runs_a_sweep_and_refuses_a_driver_without_it(
        tmp_path):
    import subprocess
    import sys

    from loopback_cluster import loopback_cluster
    from sweeping import RUN, sweep_runs

    home = tmp_path / "home"
    home.mkdir()
    grid = tmp_path / "auth.toml"
    grid.write_text(env_grid("auth", [1, 2]))
    with loopback_cluster(token=RAY_TOKEN) as cluster:
        cluster.start_head(num_cpus=1, resources={}, dashboard=False)
        cluster.add_node(num_cpus=1, name="b", resources={})

        def driver(env: dict[str, str], db: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, str(RUN), "--grid", str(grid), "--address", cluster.address,
                 "--tracking-uri", f"sqlite:///{tmp_path}/{db}"],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

        # Without the token: refused, one line, nothing created.
        for env, says in (
                (_driver_env(home), "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH="),
                (_driver_env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-token"),
                 "is this driver's token (from $RAY_AUTH_TOKEN) the one")):
            refused = driver(env, "refused.db")
            assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-3000:]
            assert "Traceback" not in refused.stderr, refused.stderr[-3000:]
            errors = [line for line in refused.stderr.splitlines()
                      if line.startswith("versweep: error:")]
            assert len(errors) == 1, refused.stderr[-3000:]
            assert errors[0].startswith(
                f"versweep: error: cannot join the Ray cluster at {cluster.address}: ")
            assert says in errors[0], errors[0]
            print("REFUSED:", errors[0])
            assert not (tmp_path / "refused.db").exists()

        # With it, the documented way: RAY_AUTH_MODE=token and the token's file.
        token_file = tmp_path / "auth_token"
        token_file.write_text(RAY_TOKEN)
        token_file.chmod(0o600)
        done = driver(_driver_env(home, RAY_AUTH_MODE="token",
                                  RAY_AUTH_TOKEN_PATH=str(token_file)), "mlflow.db")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert "trials: 2 ok" in done.stdout
        _, parents, children = sweep_runs(f"sqlite:///{tmp_path}/mlflow.db", "auth")
        assert len(parents) == 1 and len(children) == 2
        assert all(c.data.tags["versweep.status"] == "ok" for c in children)
        for run in parents + children:
            assert RAY_TOKEN not in str(run.data.params) + str(run.data.tags)


# ------------------------------------------------------------------ what a trial's container can do

# Run inside a live trial's container, as the trial's own user, with its limits: every way
# out of its private /tmp it tries, and what happened. A fact is True where it succeeded.
_ESCAPES = '''
import errno, json, os, socket
facts = {}
def attempt(name, action):
    try:
        action()
        facts[name] = True
    except OSError as exc:
        facts[name] = errno.errorcode.get(exc.errno, str(exc))
def write(path):
    return lambda: open(path, "w").write("written by a trial")
for path in ("/opt/versweep/workers/escape", "/opt/versweep/escape", "/escape",
             "/etc/escape", "/usr/escape", "/var/tmp/escape", "/root/escape",
             "/home/escape", "/run/escape", "/dev/shm/escape"):
    attempt("write " + path, write(path))
attempt("append /etc/passwd", lambda: open("/etc/passwd", "a"))
attempt("mkdir /opt/versweep/workers/d", lambda: os.mkdir("/opt/versweep/workers/d"))
attempt("write /tmp/own", write("/tmp/own"))
attempt("chown /tmp/own to root", lambda: os.chown("/tmp/own", 0, 0))
attempt("setuid 0", lambda: os.setuid(0))
attempt("raw socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                            socket.IPPROTO_ICMP))
attempt("packet socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
def bind_low():
    with socket.socket() as s:
        s.bind(("0.0.0.0", 80))
attempt("bind port 80", bind_low)
for host, port in (("1.1.1.1", 53), ("172.17.0.1", 2375), ("8.8.8.8", 443)):
    attempt("connect %s:%d" % (host, port),
            lambda: socket.create_connection((host, port), timeout=3).close())
def udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x", ("1.1.1.1", 53))
attempt("udp send 1.1.1.1:53", udp)
attempt("docker socket", lambda: socket.socket(socket.AF_UNIX).connect("/var/run/docker.sock"))
mounts = open("/proc/self/mounts").read().splitlines()
facts["tmp mount"] = [m for m in mounts if m.split()[1] == "/tmp"]
facts["writable mounts"] = sorted(m.split()[1] for m in mounts
                                  if "rw" in m.split()[3].split(",")
                                  and not m.split()[1].startswith(("/proc", "/sys", "/dev")))
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
facts["uid"] = os.getuid()
facts["cap_eff"] = status["CapEff"].strip()
facts["cap_bnd"] = status["CapBnd"].strip()
facts["no_new_privs"] = status["NoNewPrivs"].strip()
print(json.dumps(facts))
'''


def test_a_trial_cannot_write_outside_its_private_tmp_nor_reach_a_network(docker_image,
                                                                          tmp_path):
    import json

    from test_backends import ENDLESS_LM, docker_backend, spec_of

    backend = docker_backend()
    before = sorted(p.name for p in backend.workers_dir.iterdir())
    handle = backend.start(spec_of("ptb_lm", ENDLESS_LM, image=docker_image), gpu_ids=[],
                           log_path=tmp_path / "w.log")
    try:
        assert next(handle.events())["event"] == "env"  # the trial's worker is running
        done = handle.container.exec_run(["python", "-c", _ESCAPES])
        facts = json.loads(done.output.decode().strip().splitlines()[-1])
    finally:
        handle.close()
    print(json.dumps(facts, indent=1))
    read_only = {"EROFS", "EACCES"}
    for name, outcome in facts.items():
        # /dev/shm is the container's own 64 MiB tmpfs (torch's shared memory between
        # processes), gone with the container like /tmp: the trial's own, not a way out.
        if name.startswith(("write /", "append ", "mkdir ")) and name not in (
                "write /tmp/own", "write /dev/shm/escape"):
            assert outcome in read_only or outcome == "ENOENT", (name, outcome)
    assert facts["write /tmp/own"] is True  # its own scratch space, and only that
    assert facts["chown /tmp/own to root"] == "EPERM"
    assert facts["setuid 0"] == "EPERM"
    assert facts["raw socket"] == "EPERM" and facts["packet socket"] == "EPERM"
    # Binding port 80 succeeds without CAP_NET_BIND_SERVICE: Docker sets
    # net.ipv4.ip_unprivileged_port_start=0 in each container's own network namespace,
    # which here holds only its loopback; nothing outside the container can reach it.
    for name in ("connect 1.1.1.1:53", "connect 172.17.0.1:2375", "connect 8.8.8.8:443",
                 "udp send 1.1.1.1:53"):
        assert facts[name] == "ENETUNREACH", (name, facts[name])  # no interface but lo
    assert facts["docker socket"] == "ENOENT"
    assert facts["writable mounts"] == ["/tmp"], facts["writable mounts"]  # /dev/shm aside
    assert "nosuid" in facts["tmp mount"][0] and "nodev" in facts["tmp mount"][0]
    assert facts["uid"] == 10001
    assert int(facts["cap_eff"], 16) == 0 and int(facts["cap_bnd"], 16) == 0
    assert facts["no_new_privs"] == "1"
    # Nothing reached the host's files: the mounted checkout is as it was.
    assert sorted(p.name for p in backend.workers_dir.iterdir()) == before
