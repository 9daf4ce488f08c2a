"""Structure of the deployment files under deploy/ (no Docker engine or cluster needed).

Parses every YAML file, then checks the properties the deployment story relies on: replicas do
not migrate and wait for the one-shot migration, probes hit /readyz and /healthz, names agree
between compose, nginx and Prometheus, and the image serves with auth on.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
API_SERVICES = ("api1", "api2")
CLI_COMMANDS = {"serve", "migrate", "worker", "tenant", "token"}


def _load_all(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    [doc] = _load_all(DEPLOY / "compose.yml")
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _load_all(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} defined twice"
            objects[key] = doc
    return objects


def _one(objects: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for (k, _), doc in objects.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _command(container: dict[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def _nginx_upstream() -> list[tuple[str, int]]:
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    block = re.search(r"upstream\s+cairn\s*\{(.*?)\}", conf, re.S)
    assert block, "no `upstream cairn` block in nginx.conf"
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", block.group(1), re.M)
    return [(host, int(port)) for host, port in servers]


def _dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")
    ]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def _instruction(name: str) -> list[str]:
    return [rest for instr, rest in _dockerfile() if instr == name]


# --- every file parses -----------------------------------------------------------------------


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert _load_all(path), f"{path} is empty"


def test_expected_files_exist() -> None:
    for name in ("Dockerfile", "compose.yml", "README.md", "prometheus/prometheus.compose.yml"):
        assert (DEPLOY / name).is_file(), name
    for name in ("configmap", "secret", "migrate-job", "deployment", "service", "pdb"):
        assert (K8S / f"{name}.yaml").is_file(), name


# --- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile() -> None:
    assert _instruction("FROM") == ["python:3.11-slim"]
    assert json.loads(_instruction("ENTRYPOINT")[-1]) == ["cairn"]
    cmd = json.loads(_instruction("CMD")[-1])
    assert cmd[0] == "serve" and "--auth" in cmd
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert "8080" in _instruction("EXPOSE")[-1].split()
    assert any(".[server]" in run for run in _instruction("RUN"))
    user = _instruction("USER")[-1].split(":")[0]
    assert user not in ("root", "0")
    [healthcheck] = _instruction("HEALTHCHECK")
    assert "/healthz" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck


# --- compose -----------------------------------------------------------------------------------


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "migrate", *API_SERVICES, "nginx", "prometheus"} <= set(services)
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:16")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])


def test_compose_migrate_runs_once(compose: dict[str, Any]) -> None:
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "CAIRN_DATABASE_URL" in migrate["environment"]


@pytest.mark.parametrize("name", API_SERVICES)
def test_compose_api_replicas(compose: dict[str, Any], name: str) -> None:
    api = compose["services"][name]
    env = api["environment"]
    assert str(env["CAIRN_RUN_MIGRATIONS"]).lower() == "false"
    assert str(env["CAIRN_AUTH"]).lower() == "true"
    assert env["CAIRN_HOST"] == "0.0.0.0"
    assert (
        env["CAIRN_DATABASE_URL"]
        == compose["services"]["migrate"]["environment"]["CAIRN_DATABASE_URL"]
    )
    assert "@postgres:5432/" in env["CAIRN_DATABASE_URL"]
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "ports" not in api, "replicas are reached through nginx"
    assert "/readyz" in " ".join(api["healthcheck"]["test"])


def test_compose_builds_the_dockerfile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("migrate", *API_SERVICES):
        build = services[name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).is_file()
        assert services[name]["image"] == services["migrate"]["image"]


def test_compose_nginx_matches_upstream(compose: dict[str, Any]) -> None:
    nginx = compose["services"]["nginx"]
    assert nginx["image"].startswith("nginx:1.27")
    assert "8080:8080" in nginx["ports"]
    source, target = nginx["volumes"][0].split(":")[:2]
    assert (DEPLOY / source).resolve() == DEPLOY / "nginx" / "nginx.conf"
    assert target == "/etc/nginx/nginx.conf"
    upstream = _nginx_upstream()
    assert sorted(host for host, _ in upstream) == sorted(API_SERVICES)
    assert {port for _, port in upstream} == {8080}
    assert set(API_SERVICES) <= set(compose["services"])
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert re.search(r"^\s*listen\s+8080;", conf, re.M)
    read_timeout = re.search(r"proxy_read_timeout\s+(\d+)s;", conf)
    assert read_timeout and int(read_timeout.group(1)) > 30


def test_compose_prometheus_scrapes_the_replicas(compose: dict[str, Any]) -> None:
    prom = compose["services"]["prometheus"]
    [config_flag] = [c for c in prom["command"] if c.startswith("--config.file=")]
    mounts = dict(v.split(":")[:2] for v in prom["volumes"])
    [source] = [s for s, t in mounts.items() if t == "/etc/prometheus"]
    config_path = DEPLOY / source / Path(config_flag.split("=", 1)[1]).name
    assert config_path == DEPLOY / "prometheus" / "prometheus.compose.yml"
    [config] = _load_all(config_path.resolve())
    assert config["rule_files"] == ["alerts.yml"]
    targets = [
        t for sc in config["scrape_configs"] for s in sc["static_configs"] for t in s["targets"]
    ]
    assert sorted(targets) == sorted(f"{h}:{p}" for h, p in _nginx_upstream())


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing (.ci/run installs)")
def test_compose_prometheus_config_is_valid() -> None:
    out = subprocess.run(
        ["promtool", "check", "config", "deploy/prometheus/prometheus.compose.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# --- Kubernetes --------------------------------------------------------------------------------


def test_k8s_one_namespace(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    namespaces = {doc["metadata"].get("namespace") for (kind, _), doc in k8s.items()}
    namespaces.discard(None)
    assert namespaces == {"cairn"}
    for (kind, _), doc in k8s.items():
        if kind != "Namespace":
            assert doc["metadata"].get("namespace") == "cairn", kind


def test_k8s_deployment(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    dep = _one(k8s, "Deployment")
    assert dep["spec"]["replicas"] >= 2
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    spec = pod["spec"]
    assert spec["enableServiceLinks"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    [container] = spec["containers"]
    command = _command(container)
    assert "serve" in command and "--auth" in command
    env = _env(container)
    assert env["CAIRN_RUN_MIGRATIONS"] == "false"
    assert env["CAIRN_DATABASE_URL"]["secretKeyRef"]["name"] in {
        name for kind, name in k8s if kind == "Secret"
    }
    for ref in container["envFrom"]:
        assert ("ConfigMap", ref["configMapRef"]["name"]) in k8s
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == 8080

    def probe_port(probe: dict[str, Any]) -> int:
        port = probe["httpGet"]["port"]
        return int(ports.get(port, port))

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probe_port(container["readinessProbe"]) == probe_port(container["livenessProbe"]) == 8080
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > 30 and grace > int(pre_stop[1]) + 5
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_k8s_migration_job(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    job = _one(k8s, "Job")
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] in ("Never", "OnFailure")
    assert spec["enableServiceLinks"] is False
    [container] = spec["containers"]
    command = _command(container)
    assert command[-1] == "migrate" and command.count("cairn") <= 1
    dep_container = _one(k8s, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == dep_container["image"]
    url = _env(container)["CAIRN_DATABASE_URL"]
    assert url == _env(dep_container)["CAIRN_DATABASE_URL"]


def test_k8s_service(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    svc = _one(k8s, "Service")
    dep = _one(k8s, "Deployment")
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert svc["spec"].get("sessionAffinity", "None") == "None"
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    [port] = svc["spec"]["ports"]
    assert port["port"] == 8080 and port["targetPort"] == 8080
    # A Service named "cairn" would inject CAIRN_PORT=tcp://... into pods with service links.
    assert svc["metadata"]["name"] != "cairn"


def test_k8s_pdb_and_hpa(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    pdb = _one(k8s, "PodDisruptionBudget")
    dep = _one(k8s, "Deployment")
    assert pdb["spec"]["minAvailable"] == 1
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpas = [doc for (kind, _), doc in k8s.items() if kind == "HorizontalPodAutoscaler"]
    for hpa in hpas:
        assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
        assert hpa["spec"]["minReplicas"] >= 2


def test_k8s_config_values_are_strings(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    cm = _one(k8s, "ConfigMap")
    assert all(isinstance(v, str) for v in cm["data"].values())
    assert cm["data"]["CAIRN_AUTH"] == "true"
    secret = _one(k8s, "Secret")
    assert secret["stringData"]["url"].startswith("postgresql://")


# --- README commands agree with the files -------------------------------------------------------


def test_readme_commands_match_the_files(compose: dict[str, Any]) -> None:
    readme = (DEPLOY / "README.md").read_text()
    runs = re.findall(r"docker compose -f (\S+) run --rm (\S+) (.+)", readme)
    assert runs, "README shows no `docker compose run` admin command"
    for compose_file, service, rest in runs:
        assert (ROOT / compose_file).resolve() == DEPLOY / "compose.yml"
        assert service in compose["services"]
        # The image's ENTRYPOINT is `cairn`: arguments start at the sub-command.
        assert shlex.split(rest)[0] in CLI_COMMANDS, rest
    for path in re.findall(r"kubectl apply -f (\S+)", readme):
        assert (ROOT / path).is_file(), path
    execs = re.findall(r"kubectl -n cairn exec deploy/(\S+) -- (.+)", readme)
    assert execs, "README shows no `kubectl exec` admin command"
    for deployment, command in execs:
        assert ("Deployment", deployment) in _k8s_names()
        program, subcommand = shlex.split(command)[:2]
        assert program == "cairn" and subcommand in CLI_COMMANDS, command


def _k8s_names() -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for p in K8S.glob("*.yaml") for d in _load_all(p)}
