"""The deployment files in deploy/, checked offline: no container engine, no cluster, no network.

The compose files are validated against the compose specification's JSON schema as vendored by
check-jsonschema, the Kubernetes manifests against the Kubernetes JSON schemas bundled by
kubernetes-validate (strict: unknown fields fail), the NATS configuration of the compose cluster by
nats-server itself (`-t`), and the Helm values for NATS against the keys of the chart's own
values.yaml (an upstream copy under deploy/kubernetes/upstream/). The rest is what no schema sees:
names, roles, variables, probes and images that must agree between the files and the code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from victoria.cli import ACTOR_NAMES, build_parser
from victoria.runtime.natsserver import find_binary

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
K8S = DEPLOY / "kubernetes"
NATS_VALUES = K8S / "nats-values.yaml"
CHART_VALUES = K8S / "upstream" / "nats-chart-2.14.2-values.yaml"
KUBERNETES_VERSION = "1.31"  # the oldest minor version still maintained upstream when written

# Names the deployment uses that the code side of issue 13 is adding at the same time as deploy/:
# not failures while they are missing from the code. Remove each once the code reads it.
PENDING_ENV: frozenset[str] = frozenset()
PENDING_COMMANDS: frozenset[str] = frozenset()

ROLES = ("supervisor", "gateway", "victoria", "veronica", "monitor", "llm-runner", "projector", "observer")
SCALED_OUT = ("gateway", "victoria", "veronica", "llm-runner", "projector")
GATEWAY_PORT = 8010


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def k8s_manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name not in ("kustomization.yaml", NATS_VALUES.name))


def k8s_resources() -> list[dict[str, Any]]:
    return [
        doc for path in k8s_manifest_files() if path.name != "secret.example.yaml" for doc in load_all(path)
    ]


def pod_spec(resource: dict[str, Any]) -> dict[str, Any] | None:
    if resource["kind"] in ("Deployment", "StatefulSet", "Job"):
        spec = resource["spec"]["template"]["spec"]
        assert isinstance(spec, dict)
        return spec
    return None


def victoria_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(resource, container) for every container of the victoria image in the manifests."""
    for resource in k8s_resources():
        spec = pod_spec(resource)
        for container in spec["containers"] if spec else ():
            if container["image"].split(":")[0] == "victoria":
                yield resource, container


def victoria_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the victoria image."""
    return {name: svc for name, svc in compose()["services"].items() if "build" in svc}


def role_of(command: list[str]) -> str:
    """`actor llm-runner` -> llm-runner; `gateway ...` -> gateway; `setup` -> supervisor."""
    if command[0] == "actor":
        return command[1]
    return "supervisor" if command[0] == "setup" else command[0]


def users_file() -> Path:
    """The repository's users and permissions: nats-users.conf once it is split from nats.conf."""
    split = ROOT / "nats-users.conf"
    return split if split.exists() else ROOT / "nats.conf"


def users_file_text() -> str:
    path = users_file()
    text = path.read_text()
    if path.name == "nats.conf":  # until the split: its users part, from the first permissions on
        text = text[re.search(r"^\w+_PERMISSIONS\s*=", text, re.M).start() :]  # type: ignore[union-attr]
    return text


def nats_users() -> dict[str, str]:
    """User name -> the environment variable that holds its password, as the users file says."""
    found = re.findall(r'user:\s*"([^"]+)",\s*password:\s*\$(\w+)', users_file_text())
    return dict(found)


def env_names_read_by_the_code() -> set[str]:
    names: set[str] = set()
    sources = [
        p for folder in ("actors", "events", "gateway", "runtime") for p in (ROOT / folder).rglob("*.py")
    ]
    sources += list((ROOT / "victoria").glob("*.py"))  # victoria/actors etc. are links to the above
    for path in sources:
        names.update(re.findall(r"[\"']((?:VICTORIA|OTEL|NATS)_[A-Z0-9_]+)[\"']", path.read_text()))
    return names


def compose_schema() -> dict[str, Any]:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    assert isinstance(schema, dict)
    return schema


def validate_compose(doc: dict[str, Any]) -> None:
    schema = compose_schema()
    jsonschema.validators.validator_for(schema)(schema).validate(doc)


# --- Schemas ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE, DEPLOY / "compose.jaeger.yaml"], ids=lambda p: p.name)
def test_the_compose_files_follow_the_compose_specification_schema(path: Path) -> None:
    validate_compose(yaml.safe_load(path.read_text()))


def test_the_compose_schema_rejects_a_misspelt_key_so_the_check_above_means_something() -> None:
    doc = compose()
    doc["services"]["gateway"]["healthchek"] = doc["services"]["gateway"].pop("healthcheck")
    with pytest.raises(jsonschema.ValidationError, match="healthchek"):
        validate_compose(doc)


@pytest.mark.parametrize("path", k8s_manifest_files(), ids=lambda p: p.name)
def test_the_kubernetes_manifests_follow_the_kubernetes_schemas_strictly(path: Path) -> None:
    docs = load_all(path)
    assert docs
    for doc in docs:
        # An unknown kind or apiVersion raises SchemaNotFoundError: a failure here, not a warning.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_kubernetes_schemas_reject_an_unknown_field_so_the_check_above_means_something() -> None:
    gateway = load_all(K8S / "gateway.yaml")[0]
    gateway["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/health"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest_but_the_secret_example_and_generates_the_users_configmap() -> (
    None
):
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in k8s_manifest_files()} - {"secret.example.yaml"}
    [generator] = kustomization["configMapGenerator"]
    assert generator["name"] == "victoria-nats-users"
    assert generator["options"]["disableNameSuffixHash"] is True  # the Helm values name it as is
    [entry] = generator["files"]
    key, _, source = entry.partition("=")
    assert key == "nats-users.conf"
    # The repository's own file, never a copy kept in deploy/.
    assert (K8S / source).resolve() == ROOT / "nats-users.conf"


def test_kustomize_builds_the_manifests(tmp_path: Path) -> None:
    assert shutil.which("kubectl"), "kubectl (kustomize) is needed to build the manifests"
    # A copy, with the users file in place whether or not the repository has split it out yet.
    shutil.copytree(K8S, tmp_path / "deploy" / "kubernetes")
    (tmp_path / "nats-users.conf").write_text(users_file_text())
    built = subprocess.run(
        [
            "kubectl",
            "kustomize",
            "--load-restrictor",
            "LoadRestrictionsNone",
            str(tmp_path / "deploy" / "kubernetes"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(built) if doc]
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    assert ("ConfigMap", "victoria-nats-users") in names
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "victoria"
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# --- What the processes run ----------------------------------------------------------------------


def test_every_actor_runs_in_compose_and_in_kubernetes() -> None:
    compose_commands = [svc["command"] for svc in victoria_services().values()]
    k8s_commands = [container["args"] for _, container in victoria_containers()]
    for commands in (compose_commands, k8s_commands):
        actors = {command[1] for command in commands if command[0] == "actor"}
        assert actors == set(ACTOR_NAMES)
        assert ["setup"] in commands
        assert ["gateway", "--host", "0.0.0.0", "--port", str(GATEWAY_PORT)] in commands


def test_every_command_the_deployment_runs_is_a_victoria_command() -> None:
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if a.dest == "command"]
    known = set(subparsers.choices or ()) | PENDING_COMMANDS
    commands = [svc["command"] for svc in victoria_services().values()]
    commands += [container["args"] for _, container in victoria_containers()]
    assert {command[0] for command in commands} <= known


def test_every_variable_given_to_victoria_is_one_the_code_reads() -> None:
    read = env_names_read_by_the_code() | PENDING_ENV
    given: set[str] = set()
    for svc in victoria_services().values():
        given |= set(svc["environment"])
    configmap = load_all(K8S / "configmap.yaml")[0]
    given |= set(configmap["data"])
    for _, container in victoria_containers():
        given |= {env["name"] for env in container.get("env", ())}
    assert given - read == set()
    # The ones the brief names, all given somewhere.
    assert {
        "NATS_URL",
        "VICTORIA_NATS_USER",
        "VICTORIA_NATS_PASSWORD",
        "VICTORIA_API_TOKEN",
        "VICTORIA_POSTGRES_DSN",
        "VICTORIA_LLM_URL",
        "VICTORIA_LLM_API",
        "VICTORIA_WORKSPACE",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "VICTORIA_INSTANCE",
        "VICTORIA_REPLICAS",
    } <= given


def test_each_process_connects_to_nats_as_its_own_role_with_that_roles_password() -> None:
    users = nats_users()
    assert set(users) == set(ROLES)
    for name, svc in victoria_services().items():
        env = svc["environment"]
        role = role_of(svc["command"])
        assert env["VICTORIA_NATS_USER"] == role, name
        assert env["VICTORIA_NATS_PASSWORD"].startswith("${" + users[role] + ":?"), name
    for resource, container in victoria_containers():
        env = {e["name"]: e for e in container["env"]}
        role = role_of(container["args"])
        assert env["VICTORIA_NATS_USER"]["value"] == role, resource["metadata"]["name"]
        ref = env["VICTORIA_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "victoria-secrets", "key": users[role]}


def test_only_the_setup_job_is_told_the_number_of_stream_replicas() -> None:
    for name, svc in victoria_services().items():
        assert ("VICTORIA_REPLICAS" in svc["environment"]) == (svc["command"] == ["setup"]), name
    assert victoria_services()["setup"]["environment"]["VICTORIA_REPLICAS"] == "3"
    for resource, container in victoria_containers():
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert ("VICTORIA_REPLICAS" in env) == (resource["kind"] == "Job")
        if resource["kind"] == "Job":
            assert env["VICTORIA_REPLICAS"] == "3"


def test_the_nats_url_names_the_three_servers_everywhere() -> None:
    env = victoria_services()["gateway"]["environment"]
    assert env["NATS_URL"] == "nats://nats-0:4222,nats://nats-1:4222,nats://nats-2:4222"
    configmap = load_all(K8S / "configmap.yaml")[0]
    urls = configmap["data"]["NATS_URL"].split(",")
    assert urls == [f"nats://nats-{i}.nats-headless:4222" for i in range(3)]


def test_every_long_running_kubernetes_pod_is_named_after_itself_as_its_instance() -> None:
    for resource, container in victoria_containers():
        if resource["kind"] == "Job":
            continue
        env = {e["name"]: e for e in container["env"]}
        field = env["VICTORIA_INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert field == "metadata.name", resource["metadata"]["name"]


def test_the_scaled_out_services_run_several_instances_and_the_monitor_at_least_one() -> None:
    services = victoria_services()
    by_role = {role_of(svc["command"]): svc for svc in services.values()}
    deployments = {
        role_of(container["args"]): resource
        for resource, container in victoria_containers()
        if resource["kind"] == "Deployment"
    }
    for role in SCALED_OUT:
        assert by_role[role]["deploy"]["replicas"] >= 2, role
        assert deployments[role]["spec"]["replicas"] >= 2, role
    assert deployments["monitor"]["spec"]["replicas"] >= 1
    assert by_role["monitor"].get("deploy", {}).get("replicas", 1) >= 1


def test_disruption_budgets_cover_victoria_and_the_llm_runner() -> None:
    budgets = [doc for doc in load_all(K8S / "pdb.yaml") if doc["kind"] == "PodDisruptionBudget"]
    covered = {budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for budget in budgets}
    assert {"victoria", "llm-runner"} <= covered
    labels = {
        resource["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        for resource in k8s_resources()
        if resource["kind"] == "Deployment"
    }
    assert covered <= labels


# --- The gateway: probes, load balancing ---------------------------------------------------------


def test_the_gateway_is_live_on_health_and_ready_on_ready_at_port_8010() -> None:
    [(_, gateway)] = [(r, c) for r, c in victoria_containers() if c["args"][0] == "gateway"]
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/health", "port": GATEWAY_PORT}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": GATEWAY_PORT}
    assert [p["containerPort"] for p in gateway["ports"]] == [GATEWAY_PORT]
    [service] = [d for d in load_all(K8S / "gateway.yaml") if d["kind"] == "Service"]
    assert service["spec"]["ports"][0]["targetPort"] == GATEWAY_PORT
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "gateway"}
    # compose: ready is what the load balancer waits for
    probe = " ".join(compose()["services"]["gateway"]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{GATEWAY_PORT}/ready" in probe
    lb = compose()["services"]["loadbalancer"]
    assert lb["depends_on"] == {"gateway": {"condition": "service_healthy"}}


def test_the_load_balancer_spreads_over_the_gateways_and_does_not_buffer_server_sent_events() -> None:
    conf = (COMPOSE_DIR / "nginx.conf").read_text()
    assert re.search(rf"server\s+gateway:{GATEWAY_PORT}\s+resolve;", conf)
    assert re.search(r"proxy_buffering\s+off;", conf)
    assert re.search(r"client_max_body_size\s+64m;", conf)  # /run and /stream take up to 64 MB
    mounts = compose()["services"]["loadbalancer"]["volumes"]
    assert "./nginx.conf:/etc/nginx/conf.d/default.conf:ro" in mounts


def test_the_gateway_gets_its_api_token_from_a_secret() -> None:
    assert victoria_services()["gateway"]["environment"]["VICTORIA_API_TOKEN"].startswith(
        "${VICTORIA_API_TOKEN:?"
    )
    [(_, gateway)] = [(r, c) for r, c in victoria_containers() if c["args"][0] == "gateway"]
    env = {e["name"]: e for e in gateway["env"]}
    assert env["VICTORIA_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "victoria-secrets"


# --- Images and containers -------------------------------------------------------------------------


def test_every_victoria_process_runs_the_one_image_built_by_the_dockerfile() -> None:
    images = {svc["image"] for svc in victoria_services().values()}
    assert len(images) == 1
    compose_default = re.fullmatch(r"\$\{VICTORIA_IMAGE:-(.+)\}", images.pop())
    assert compose_default
    k8s_images = {container["image"] for _, container in victoria_containers()}
    assert k8s_images == {compose_default.group(1)}
    for svc in victoria_services().values():
        assert svc["build"] == {"context": "../..", "dockerfile": "deploy/Dockerfile"}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    [image] = kustomization["images"]
    assert f"{image['name']}:{image['newTag']}" == compose_default.group(1)
    assert f"-t {compose_default.group(1)} ." in (DEPLOY / "Dockerfile").read_text()


def test_the_dockerfile_installs_the_repository_and_runs_victoria_as_a_non_root_user() -> None:
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    assert "COPY . /tmp/victoria-src" in instructions
    assert any(line.startswith("RUN pip install /tmp/victoria-src") for line in instructions)
    [user] = [line for line in instructions if line.startswith("USER ")]
    assert not user.split()[1].startswith(("root", "0:")) and user.split()[1] != "0"
    assert instructions[-2] == 'ENTRYPOINT ["victoria"]'
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert ".venv" in ignore and ".git" in ignore


def test_kubernetes_pods_run_as_non_root_with_resources_and_read_only_roots() -> None:
    for resource in k8s_resources():
        spec = pod_spec(resource)
        if spec is None:
            continue
        name = resource["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            assert set(container["resources"]) == {"requests", "limits"}, name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert "memory" in container["resources"]["limits"], name
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name


def test_the_compose_victoria_services_have_read_only_roots_and_start_after_setup() -> None:
    for name, svc in victoria_services().items():
        assert svc["read_only"] is True, name
        assert "/tmp" in svc["tmpfs"], name
        if name == "setup":
            assert all(dep["condition"] == "service_healthy" for dep in svc["depends_on"].values())
            assert set(svc["depends_on"]) == {"nats-0", "nats-1", "nats-2"}
        else:
            assert svc["depends_on"]["setup"] == {"condition": "service_completed_successfully"}, name
    assert victoria_services()["projector"]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_postgres_and_jaeger_are_those_of_the_rest_of_the_repository() -> None:
    services = compose()["services"]
    jaeger = yaml.safe_load((DEPLOY / "compose.jaeger.yaml").read_text())["services"]["jaeger"]["image"]
    assert services["jaeger"]["image"] == jaeger
    assert services["postgres"]["image"] == "postgres:16"
    assert "postgres:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    k8s_images = {c["image"] for r in k8s_resources() if (s := pod_spec(r)) for c in s["containers"]}
    assert {jaeger, "postgres:16"} <= k8s_images
    for svc in victoria_services().values():
        assert svc["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert load_all(K8S / "configmap.yaml")[0]["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"


# --- Secrets -------------------------------------------------------------------------------------


def test_the_env_example_lists_every_secret_compose_requires() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = (COMPOSE_DIR / ".env.example").read_text()
    listed = set(re.findall(r"^(\w+)=", example, re.M))
    assert required <= listed
    assert {"VICTORIA_API_TOKEN", "POSTGRES_PASSWORD"} | set(nats_users().values()) <= required


def test_the_kubernetes_secret_example_has_the_same_names_as_the_env_example() -> None:
    [secret] = load_all(K8S / "secret.example.yaml")
    keys = set(secret["stringData"])
    example = set(re.findall(r"^(\w+)=", (COMPOSE_DIR / ".env.example").read_text(), re.M))
    assert keys - example == {"VICTORIA_POSTGRES_DSN"}  # compose builds the DSN from the password
    refs = set()
    for resource in k8s_resources():
        spec = pod_spec(resource)
        for container in spec["containers"] if spec else ():
            for env in container.get("env", ()):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "victoria-secrets"
                    refs.add(ref["key"])
    values = yaml.safe_load(NATS_VALUES.read_text())
    refs |= {v["valueFrom"]["secretKeyRef"]["key"] for v in values["container"]["env"].values()}
    assert refs == keys


# --- NATS ----------------------------------------------------------------------------------------


def test_the_nats_servers_get_every_role_password_that_the_users_file_names() -> None:
    passwords = set(nats_users().values())
    services = compose()["services"]
    for i in range(3):
        env = services[f"nats-{i}"]["environment"]
        assert set(env) == passwords | {"NATS_SERVER_NAME"}
        assert env["NATS_SERVER_NAME"] == f"nats-{i}"
    values = yaml.safe_load(NATS_VALUES.read_text())
    assert set(values["container"]["env"]) == passwords


def test_the_compose_nats_servers_include_the_repositorys_users_file() -> None:
    assert re.search(r'^include "nats-users.conf"$', (COMPOSE_DIR / "nats.conf").read_text(), re.M)
    for i in range(3):
        svc = compose()["services"][f"nats-{i}"]
        assert svc["image"].startswith("nats:2.1")
        assert version_of(svc["image"]) >= (2, 11)
        mounts = [v.split(":") for v in svc["volumes"]]
        by_target = {target: source for source, target, *_ in mounts}
        assert by_target["/etc/nats/nats.conf"] == "./nats.conf"
        assert (COMPOSE_DIR / by_target["/etc/nats/nats-users.conf"]).resolve() == ROOT / "nats-users.conf"
        assert by_target["/data"] == f"nats-{i}"
        assert svc["command"] == ["nats-server", "--config", "/etc/nats/nats.conf"]


def version_of(image: str) -> tuple[int, int]:
    found = re.match(r"^(\d+)\.(\d+)", image.split(":")[1])
    assert found, image
    return int(found.group(1)), int(found.group(2))


def test_nats_server_accepts_the_compose_cluster_config_on_each_node(tmp_path: Path) -> None:
    # The compose layout: nats.conf and nats-users.conf side by side in /etc/nats.
    shutil.copy(COMPOSE_DIR / "nats.conf", tmp_path / "nats.conf")
    (tmp_path / "nats-users.conf").write_text(users_file_text())
    binary = find_binary()
    env = {"PATH": os.environ.get("PATH", "")}
    env |= {var: f"password-of-{var.lower()}" for var in nats_users().values()}
    for i in range(3):
        result = subprocess.run(
            [str(binary), "-t", "-c", str(tmp_path / "nats.conf")],
            env=env | {"NATS_SERVER_NAME": f"nats-{i}"},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    # and without a role's password it refuses the file, naming the variable
    env.pop(nats_users()["observer"])
    result = subprocess.run(
        [str(binary), "-t", "-c", str(tmp_path / "nats.conf")],
        env=env | {"NATS_SERVER_NAME": "nats-0"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert nats_users()["observer"] in result.stdout + result.stderr


def test_the_compose_nats_cluster_has_three_routed_servers_with_synced_jetstream() -> None:
    conf = (COMPOSE_DIR / "nats.conf").read_text()
    assert re.search(r"^server_name: \$NATS_SERVER_NAME$", conf, re.M)
    assert re.search(r"^\s*sync_interval: always$", conf, re.M)
    assert re.search(r"^\s*store_dir: /data$", conf, re.M)
    assert re.findall(r"nats-route://(nats-\d):6222", conf) == ["nats-0", "nats-1", "nats-2"]


def unknown_keys(ours: Any, chart: Any, path: str = "") -> Iterator[str]:
    """Keys of our values that the chart's values.yaml does not have (free-form maps excepted)."""
    if not isinstance(ours, dict):
        return
    for key, value in ours.items():
        where = f"{path}.{key}" if path else key
        if key in ("merge", "patch", "env", "topologySpreadConstraints") or where == "container.resources":
            continue  # free-form: NATS config, JSON patch, env map, spread map, k8s resources
        if not isinstance(chart, dict) or key not in chart:
            yield where
        else:
            yield from unknown_keys(value, chart[key], where)


def test_the_nats_values_use_only_keys_of_the_official_nats_chart() -> None:
    header = CHART_VALUES.read_text().splitlines()[:3]
    assert "nats-io/k8s" in " ".join(header) and "helm/charts/nats/values.yaml" in " ".join(header)
    chart = yaml.safe_load(CHART_VALUES.read_text())
    ours = yaml.safe_load(NATS_VALUES.read_text())
    assert list(unknown_keys(ours, chart)) == []
    assert list(unknown_keys({"config": {"clustr": {}}}, chart)) == ["config.clustr"]  # it does look
    # the chart version of the copy is the one the install command pins
    assert "--version 2.14.2" in NATS_VALUES.read_text()
    assert "--version 2.14.2" in (K8S / "README.md").read_text()


def test_the_nats_values_make_a_three_node_jetstream_cluster_that_includes_the_users_configmap() -> None:
    values = yaml.safe_load(NATS_VALUES.read_text())
    config = values["config"]
    assert config["cluster"] == {"enabled": True, "replicas": 3}
    jetstream = config["jetstream"]
    assert jetstream["enabled"] is True
    assert jetstream["fileStore"]["enabled"] is True and jetstream["fileStore"]["pvc"]["enabled"] is True
    assert jetstream["merge"]["sync_interval"] == "always"
    assert version_of("nats:" + values["container"]["image"]["tag"]) >= (2, 11)
    # The include, relative to /etc/nats-config/nats.conf, lands on the mounted ConfigMap's file.
    includes = [v for k, v in config["merge"].items() if k.endswith("$include")]
    assert includes == ["../nats-users/nats-users.conf"]
    [mount] = [p["value"] for p in values["container"]["patch"] if p["path"] == "/volumeMounts/-"]
    assert (
        os.path.normpath(os.path.join("/etc/nats-config", includes[0]))
        == mount["mountPath"] + "/nats-users.conf"
    )
    [volume] = [p["value"] for p in values["podTemplate"]["patch"] if p["path"] == "/spec/volumes/-"]
    assert volume["name"] == mount["name"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert volume["configMap"]["name"] == kustomization["configMapGenerator"][0]["name"]


# --- Documentation -------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", [DEPLOY, COMPOSE_DIR, K8S], ids=lambda p: p.name)
def test_each_deploy_folder_has_a_readme_that_says_no_image_was_run(folder: Path) -> None:
    text = " ".join((folder / "README.md").read_text().split())
    assert "no container engine" in text
    assert len(text) > 200
