"""The Kubernetes manifests of deploy/k8s: valid, and in agreement with the code.

Built-in kinds are checked strictly (an unknown field fails) against the
schemas of one pinned Kubernetes release, which kubernetes-validate ships;
Strimzi's KafkaTopic against the schema in deploy/k8s/schemas. No cluster is
involved. The other tests hold the manifests to the service itself, because
a manifest can be valid and still wrong: the ConfigMap names only real
settings and they pass the settings model, the topics are those
`service.topics` creates, the probes hit routes the API answers without a
token, the pods run as the image's user, and the grace periods cover what
the settings allow start-up and shutdown to take.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from ledger.prices import PriceList
from service.api import build_api, load_tokens
from service.database import create_engine
from service.settings import REPO_ROOT, Settings
from service.topics import topic_specs

K8S = REPO_ROOT / "deploy" / "k8s"
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
KAFKA_TOPIC_SCHEMA = K8S / "schemas" / "kafkatopic.schema.json"

# The Kubernetes release the manifests are held to.
KUBERNETES_VERSION = "1.35"
BUILT_IN_KINDS = {
    "ConfigMap",
    "Deployment",
    "Job",
    "PodDisruptionBudget",
    "Secret",
    "Service",
}
OTHER_KINDS = {"KafkaTopic", "Kustomization"}

DEPLOYMENT = "focus-ledger"
JOB = "focus-ledger-migrate"
CONFIG_MAP = "focus-ledger"
DATABASE_SECRET = "focus-ledger-database"
TOKENS_SECRET = "focus-ledger-api-tokens"
SECRET_SETTINGS = {"FOCUS_LEDGER_DATABASE_URL", "FOCUS_LEDGER_API_TOKENS"}

# Seconds a grace period leaves beyond the worst case the settings allow, for
# the kubelet's own delays and for leaving the consumer group.
MARGIN_S = 5
# A write to a topic is acknowledged once this many replicas hold it.
MIN_IN_SYNC_REPLICAS = 2
PLACEHOLDER = "REPLACE-ME"

Manifest = dict[str, Any]


def documents(folder: Path = K8S) -> list[tuple[Path, Manifest]]:
    """Every YAML document under a folder, with the file it is in."""
    found = []
    for path in sorted(folder.rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        found += [(path, doc) for doc in yaml.safe_load_all(text) if doc is not None]
    return found


def of_kind(kind: str) -> list[Manifest]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def the(kind: str, name: str) -> Manifest:
    """The one manifest of a kind and name; none, or a second, is an error."""
    matching = [doc for doc in of_kind(kind) if doc["metadata"]["name"] == name]
    assert len(matching) == 1, f"{kind}/{name}: {len(matching)} manifests"
    return matching[0]


def pod(workload: Manifest) -> Manifest:
    spec: Manifest = workload["spec"]["template"]["spec"]
    return spec


def only_container(workload: Manifest) -> Manifest:
    containers: list[Manifest] = pod(workload)["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    return containers[0]


def kustomization(folder: Path) -> Manifest:
    text = (folder / "kustomization.yaml").read_text(encoding="utf-8")
    spec: Manifest = yaml.safe_load(text)
    return spec


def generated_config_maps() -> dict[str, set[str]]:
    """The ConfigMaps kustomize generates: name and keys (the file names)."""
    generated = {}
    for path in K8S.rglob("kustomization.yaml"):
        for generator in kustomization(path.parent).get("configMapGenerator", []):
            generated[generator["name"]] = {
                entry.split("=")[0] if "=" in entry else Path(entry).name
                for entry in generator.get("files", [])
            }
    return generated


def kustomized_files(folder: Path) -> set[Path]:
    """The files a kustomization puts together, following nested folders.

    Fails on an entry that names nothing, which kustomize would refuse.
    """
    spec = kustomization(folder)
    files = {folder / "kustomization.yaml"}
    for entry in spec.get("resources", []):
        target = (folder / entry).resolve()
        if target.is_dir():
            files |= kustomized_files(target)
        else:
            assert target.is_file(), f"{folder / 'kustomization.yaml'}: no {entry}"
            files.add(target)
    for generator in spec.get("configMapGenerator", []):
        for entry in generator.get("files", []):
            target = folder / entry.split("=")[-1]
            assert target.is_file(), f"{folder / 'kustomization.yaml'}: no {entry}"
            files.add(target)
    return files


def secret_values(name: str) -> dict[str, str]:
    secret = the("Secret", name)
    assert "data" not in secret, f"{name}: the template keeps readable stringData"
    values: dict[str, str] = secret["stringData"]
    return values


def token_lines() -> list[str]:
    (text,) = secret_values(TOKENS_SECRET).values()
    return [line for line in text.splitlines() if line.strip()]


def named_port(container: Manifest, port: int | str) -> int:
    """A probe's or Service's port, resolved through the container's names."""
    if isinstance(port, int):
        return port
    numbers = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in numbers, f"no container port is named {port}"
    return int(numbers[port])


def mounted_source(workload: Manifest, file: Path) -> tuple[Manifest, str]:
    """The volume and key that put a file at a path in a workload's container."""
    for mount in only_container(workload).get("volumeMounts", []):
        if file.parent == Path(mount["mountPath"]):
            (volume,) = (
                v for v in pod(workload)["volumes"] if v["name"] == mount["name"]
            )
            source = volume.get("configMap") or volume.get("secret") or {}
            keys = {item["path"]: item["key"] for item in source.get("items", [])}
            return volume, keys.get(file.name, file.name)
    raise AssertionError(f"nothing is mounted at {file.parent}")


def image_user() -> int:
    """The uid the image runs as; the Dockerfile creates and selects it."""
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    users = {line.split()[1] for line in lines if line.startswith("USER ")}
    assert len(users) == 1, f"{DOCKERFILE}: USER lines {users}"
    (user,) = users
    assert f"--uid {user}" in DOCKERFILE.read_text(encoding="utf-8")
    return int(user)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting of the machine running the tests leaks into Settings()."""
    for name in list(os.environ):
        if name.startswith("FOCUS_LEDGER_") or name in (
            "DATABASE_URL",
            "KAFKA_BOOTSTRAP_SERVERS",
        ):
            monkeypatch.delenv(name)


def settings_of_a_pod(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a pod starts with: the ConfigMap over the defaults.

    Raises:
        pydantic.ValidationError: a value the service would refuse at start.
    """
    for name, value in the("ConfigMap", CONFIG_MAP)["data"].items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.fixture
def pod_settings(clean_environment: None, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return settings_of_a_pod(monkeypatch)


def test_every_built_in_manifest_passes_the_kubernetes_schemas() -> None:
    failures = []
    kinds = set()
    for path, doc in documents():
        if doc["kind"] in OTHER_KINDS:
            continue
        kinds.add(doc["kind"])
        where = f"{path.relative_to(K8S)}: {doc['kind']}/{doc['metadata']['name']}"
        try:
            checked = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            field = ".".join(str(part) for part in error.path)
            failures.append(f"{where}: {field}: {error.message}")
        else:
            assert checked == KUBERNETES_VERSION, f"{where}: checked as {checked}"

    assert failures == []
    assert kinds == BUILT_IN_KINDS


def test_every_kafka_topic_passes_its_schema() -> None:
    schema = json.loads(KAFKA_TOPIC_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)

    failures = [
        f"{doc['metadata'].get('name')}: {error.json_path}: {error.message}"
        for doc in of_kind("KafkaTopic")
        for error in validator.iter_errors(doc)
    ]

    assert failures == []
    assert of_kind("KafkaTopic")


def test_every_manifest_is_put_together_by_the_kustomization() -> None:
    everything = kustomized_files(K8S)
    step_one = kustomized_files(K8S / "prepare")

    assert set(K8S.rglob("*.yaml")) <= everything
    assert {doc["kind"] for _, doc in documents()} <= BUILT_IN_KINDS | OTHER_KINDS
    # Step one of a rollout prepares what a version needs, and must not yet
    # roll the Deployment.
    kinds_of_step_one = {doc["kind"] for path, doc in documents() if path in step_one}
    assert kinds_of_step_one == {
        "ConfigMap",
        "Job",
        "KafkaTopic",
        "Kustomization",
        "Secret",
    }


def test_the_config_map_names_only_settings_that_exist() -> None:
    real = {f"FOCUS_LEDGER_{name.upper()}" for name in Settings.model_fields}
    configured = set(the("ConfigMap", CONFIG_MAP)["data"])
    in_secret = set(secret_values(DATABASE_SECRET))

    assert configured - real == set()
    assert in_secret - real == set()
    assert configured & SECRET_SETTINGS == set()


def test_the_config_map_values_pass_the_settings_model(
    clean_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        pod_settings = settings_of_a_pod(monkeypatch)
    except ValidationError as error:
        pytest.fail(f"the service would refuse to start: {error}")

    assert pod_settings.api_host == "0.0.0.0"
    assert pod_settings.api_port > 0
    assert pod_settings.prices_path.is_absolute()
    assert pod_settings.api_tokens_file is not None


def test_the_kafka_topics_are_those_the_service_creates(
    pod_settings: Settings,
) -> None:
    expected = {
        spec.name: (spec.num_partitions, spec.topic_configs)
        for spec in topic_specs(pod_settings)
    }
    declared = {}
    replication = set()
    for topic in of_kind("KafkaTopic"):
        spec = topic["spec"]
        config = {key: str(value) for key, value in spec.get("config", {}).items()}
        replication.add((spec["replicas"], config.pop("min.insync.replicas", None)))
        declared[spec.get("topicName", topic["metadata"]["name"])] = (
            spec["partitions"],
            config,
        )

    assert declared == expected
    # The replication is the production choice, and what `serve` would use.
    assert replication == {
        (pod_settings.topic_replication_factor, str(MIN_IN_SYNC_REPLICAS))
    }
    assert pod_settings.topic_replication_factor > MIN_IN_SYNC_REPLICAS


def test_the_kafka_bootstrap_is_the_strimzi_cluster_of_the_topics(
    pod_settings: Settings,
) -> None:
    clusters = {
        t["metadata"]["labels"]["strimzi.io/cluster"] for t in of_kind("KafkaTopic")
    }
    # The Service's name, alone or as the first label of its DNS name.
    hosts = {
        server.rsplit(":", 1)[0].split(".")[0]
        for server in pod_settings.kafka_bootstrap_servers.split(",")
    }

    assert len(clusters) == 1
    assert hosts == {f"{cluster}-kafka-bootstrap" for cluster in clusters}


def test_no_more_pods_than_input_partitions_run_by_default(
    pod_settings: Settings,
) -> None:
    partitions = {spec.name: spec.num_partitions for spec in topic_specs(pod_settings)}
    inputs = {partitions[name] for name in pod_settings.input_topics}
    replicas = the("Deployment", DEPLOYMENT)["spec"]["replicas"]

    assert len(inputs) == 1, "the input topics must be co-partitioned"
    # Two at least, so that an eviction the budget allows leaves a consumer.
    assert 2 <= replicas <= inputs.pop()


def test_the_probes_hit_the_health_routes_on_the_api_port(
    pod_settings: Settings,
) -> None:
    serve = only_container(the("Deployment", DEPLOYMENT))
    probes = {
        kind: serve[kind]["httpGet"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    service = the("Service", DEPLOYMENT)
    (service_port,) = service["spec"]["ports"]

    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["startupProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert named_port(serve, probe["port"]) == pod_settings.api_port
    assert named_port(serve, service_port["targetPort"]) == pod_settings.api_port


async def test_the_probes_need_no_token_and_metrics_takes_the_read_token(
    clean_environment: None,
) -> None:
    serve = only_container(the("Deployment", DEPLOYMENT))
    paths = {
        serve[kind]["httpGet"]["path"] for kind in ("livenessProbe", "readinessProbe")
    }
    (reader,) = (line for line in token_lines() if line.split(":")[1] == "read")
    settings = Settings(api_tokens=",".join(token_lines()))
    engine = create_engine(settings, "sqlite+aiosqlite://")
    try:
        transport = httpx.ASGITransport(app=build_api(engine, settings))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://pod"
        ) as http:
            probed = {path: (await http.get(path)).status_code for path in paths}
            anonymous = await http.get("/metrics")
            scraped = await http.get(
                "/metrics",
                headers={"Authorization": f"Bearer {reader.split(':', 2)[2]}"},
            )
    finally:
        await engine.dispose()

    assert probed == dict.fromkeys(paths, 200)
    assert anonymous.status_code == 401
    assert scraped.status_code == 200


def test_the_pods_run_as_the_image_user_with_nothing_to_spare() -> None:
    uid = image_user()
    for workload in (the("Deployment", DEPLOYMENT), the("Job", JOB)):
        name = workload["metadata"]["name"]
        context = pod(workload)["securityContext"]
        container = only_container(workload)
        hardening = container["securityContext"]

        assert context["runAsUser"] == uid, name
        assert context["runAsNonRoot"] is True, name
        assert hardening["readOnlyRootFilesystem"] is True, name
        assert hardening["allowPrivilegeEscalation"] is False, name
        assert hardening["capabilities"]["drop"] == ["ALL"], name
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}, name


def test_the_grace_periods_cover_start_up_and_shutdown(
    pod_settings: Settings,
) -> None:
    spec = pod(the("Deployment", DEPLOYMENT))
    startup = only_container(the("Deployment", DEPLOYMENT))["startupProbe"]
    # SIGTERM waits for the broker's graceful stop, then for the relay: each
    # up to the shutdown grace.
    shutdown_s = 2 * pod_settings.shutdown_grace_s
    startup_s = startup["periodSeconds"] * startup["failureThreshold"]

    assert spec["terminationGracePeriodSeconds"] >= shutdown_s + MARGIN_S
    assert startup_s >= pod_settings.startup_wait_s + MARGIN_S


def test_the_mounted_files_are_where_the_settings_look(
    pod_settings: Settings,
) -> None:
    deployment = the("Deployment", DEPLOYMENT)
    assert pod_settings.api_tokens_file is not None

    prices, prices_key = mounted_source(deployment, pod_settings.prices_path)
    tokens, tokens_key = mounted_source(deployment, pod_settings.api_tokens_file)

    assert prices_key in generated_config_maps()[prices["configMap"]["name"]]
    assert tokens["secret"]["secretName"] == TOKENS_SECRET
    assert tokens_key in secret_values(TOKENS_SECRET)


def test_the_mounted_price_list_is_the_sample_and_loads() -> None:
    """kustomize reads files only below its folder, so the sample price list
    is copied there; this keeps the copy from drifting."""
    (copy,) = K8S.rglob("prices.toml")

    prices = PriceList.from_toml(copy.read_text(encoding="utf-8"))

    assert copy.read_bytes() == (REPO_ROOT / "examples" / "prices.toml").read_bytes()
    assert prices.skus


def test_the_secret_template_holds_placeholders_the_service_accepts(
    tmp_path: Path, clean_environment: None
) -> None:
    database_url = secret_values(DATABASE_SECRET)["FOCUS_LEDGER_DATABASE_URL"]
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("\n".join(token_lines()) + "\n", encoding="utf-8")

    tokens = load_tokens(Settings(api_tokens_file=tokens_file))

    assert make_url(database_url).drivername == "postgresql+asyncpg"
    assert PLACEHOLDER in (make_url(database_url).password or "")
    assert {token.scope.value for token in tokens} == {"read", "admin"}
    assert all(token.secret.startswith(PLACEHOLDER) for token in tokens)


def test_the_migration_and_the_service_run_one_image_and_configuration() -> None:
    deployment = the("Deployment", DEPLOYMENT)
    job = the("Job", JOB)
    serve, migrate = only_container(deployment), only_container(job)

    assert serve["image"] == migrate["image"]
    assert serve["image"].rsplit(":", 1)[1] == version("focus-ledger")
    assert serve["args"] == ["serve"]
    assert migrate["args"] == ["migrate"]
    assert serve["envFrom"] == migrate["envFrom"]
    assert serve["envFrom"] == [
        {"configMapRef": {"name": CONFIG_MAP}},
        {"secretRef": {"name": DATABASE_SECRET}},
    ]
    assert pod(job)["restartPolicy"] == "Never"


def test_the_service_and_the_budget_select_the_deployment_pods() -> None:
    deployment = the("Deployment", DEPLOYMENT)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "deployment": deployment["spec"]["selector"]["matchLabels"],
        "service": the("Service", DEPLOYMENT)["spec"]["selector"],
        "budget": the("PodDisruptionBudget", DEPLOYMENT)["spec"]["selector"][
            "matchLabels"
        ],
    }

    for owner, selector in selectors.items():
        assert selector.items() <= labels.items(), owner
    job_labels = the("Job", JOB)["spec"]["template"]["metadata"]["labels"]
    assert not selectors["service"].items() <= job_labels.items()
