"""Packaging: the Helm chart (linted and rendered by the real Helm library),
the kustomize overlays (built by `kubectl kustomize`), every rendered object
validated against the Kubernetes schemas, and the Dockerfile's properties.

No cluster and no Docker engine are needed.
"""

import json
import pathlib
import re
import shutil
import subprocess

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "event-router"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
OVERLAYS = sorted(p.parent for p in (ROOT / "deploy").glob("**/kustomization.yaml"))
KUBE_VERSION = "1.33"
# Kinds that come from CRDs, which the Kubernetes schemas do not know.
CUSTOM_KINDS = {"ServiceMonitor"}


def documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(values: dict | None = None) -> list[dict]:
    chart = helm.Chart.load(str(CHART))
    rendered = chart.render(values, name="er", namespace="events", is_install=True)
    objects = []
    for path, text in rendered.items():
        if path.endswith(".yaml"):
            objects.extend(documents(text))
    return objects


def find(objects: list[dict], kind: str, component: str | None = None) -> list[dict]:
    return [
        o
        for o in objects
        if o["kind"] == kind
        and (component is None or o["metadata"]["labels"].get("app.kubernetes.io/component") == component)
    ]


def validate_all(objects: list[dict]) -> int:
    checked = 0
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            assert obj["apiVersion"].startswith("monitoring.coreos.com/"), obj
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata'].get('name')}: {e.message} at {list(e.path)}")
        checked += 1
    return checked


def values_file(path: pathlib.Path | None) -> dict | None:
    return yaml.safe_load(path.read_text()) if path else None


# --- Helm -----------------------------------------------------------------


def test_chart_lints_clean_in_strict_mode_for_every_values_file():
    for path in [None, *CI_VALUES]:
        report = helm.lint(str(CHART), values_file(path), strict=True, kube_version=f"v{KUBE_VERSION}.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not report["errors"] and not problems, (path, report)


@pytest.mark.parametrize("path", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_chart_renders_objects_that_validate_against_kubernetes(path):
    objects = render(values_file(path))
    assert validate_all(objects) == len([o for o in objects if o["kind"] not in CUSTOM_KINDS])
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ServiceAccount"} <= kinds, kinds


def test_ci_values_files_cover_every_redis_mode():
    modes = {values_file(p)["redis"]["mode"] for p in CI_VALUES}
    assert modes == {"bundled", "external", "none"}


def test_router_deployment_is_probed_hardened_and_drains_before_it_is_killed():
    objects = render()
    (router,) = find(objects, "Deployment", "router")
    pod = router["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/live"
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "limits" in c["resources"] and "requests" in c["resources"]
    env = {e["name"]: e for e in c["env"]}
    grace = int(env["EVENT_ROUTER_SHUTDOWN_GRACE"]["value"].rstrip("s"))
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > grace + pre_stop
    assert env["EVENT_ROUTER_REDIS"]["value"].startswith("redis://er-event-router-redis:6379")
    assert {t["topologyKey"] for t in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    assert find(objects, "PodDisruptionBudget")
    # Routers never talk to the Kubernetes API.
    assert pod["automountServiceAccountToken"] is False


def operator_probe_port(container: dict) -> int:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    listen = env["EVENT_ROUTER_PROBE_LISTEN"]
    assert listen.endswith(f":{ports['probes']}"), (listen, ports)
    return ports["probes"]


def test_operator_deployment_is_probed_on_healthz_and_readyz():
    objects = render({"operator": {"probePort": 9091}})
    (operator,) = find(objects, "Deployment", "operator")
    (c,) = operator["spec"]["template"]["spec"]["containers"]
    assert operator_probe_port(c) == 9091
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    assert validate_all([operator]) == 1


def test_extra_volumes_and_mounts_reach_the_router_pod():
    values = {
        "router": {
            "extraVolumes": [
                {"name": "private-ca", "configMap": {"name": "private-ca"}},
                {"name": "client-ca", "secret": {"secretName": "client-ca"}},
            ],
            "extraVolumeMounts": [
                {"name": "private-ca", "mountPath": "/etc/event-router/ca", "readOnly": True},
                {"name": "client-ca", "mountPath": "/etc/event-router/client-ca", "readOnly": True},
            ],
            "extraEnv": [
                {"name": "SSL_CERT_DIR", "value": "/etc/event-router/ca"},
                {"name": "EVENT_ROUTER_TLS_CLIENT_CA", "value": "/etc/event-router/client-ca/ca.crt"},
            ],
        }
    }
    objects = render(values)
    (router,) = find(objects, "Deployment", "router")
    pod = router["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["private-ca"]["configMap"] == {"name": "private-ca"}
    assert volumes["client-ca"]["secret"] == {"secretName": "client-ca"}
    assert "tmp" in volumes, "the chart's own volumes stay"
    (c,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["private-ca"] == "/etc/event-router/ca"
    assert mounts["client-ca"] == "/etc/event-router/client-ca"
    assert validate_all(objects) == len([o for o in objects if o["kind"] not in CUSTOM_KINDS])
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}.0")
    assert not report["errors"], report


def test_values_schema_requires_a_mount_path_for_extra_mounts():
    with pytest.raises(Exception, match="mountPath"):
        render({"router": {"extraVolumeMounts": [{"name": "private-ca"}]}})


def subscription_schema() -> dict:
    crds = documents((CHART / "crds" / "eventrouter.dev.yaml").read_text())
    (crd,) = [c for c in crds if c["spec"]["names"]["kind"] == "Subscription"]
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def test_the_subscription_crd_accepts_an_https_sink_uri():
    import jsonschema

    schema = subscription_schema()
    doc = {
        "apiVersion": "eventrouter.dev/v1alpha1",
        "kind": "Subscription",
        "metadata": {"name": "billing"},
        "spec": {
            "topics": ["invoice.*"],
            "delivery": {"mode": "durable"},
            "sink": {"uri": "https://billing.payments.svc:8443/hooks/events"},
        },
    }
    jsonschema.validate(doc, schema)
    doc["spec"]["sink"]["uri"] = "ftp://billing.payments.svc/hooks"
    with pytest.raises(jsonschema.ValidationError, match="uri|pattern|ftp"):
        jsonschema.validate(doc, schema)


def test_external_redis_comes_from_the_secret_and_optional_objects_appear():
    objects = render(values_file(CHART / "ci" / "external-redis-values.yaml"))
    (router,) = find(objects, "Deployment", "router")
    env = {e["name"]: e for e in router["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["EVENT_ROUTER_REDIS"]["valueFrom"]["secretKeyRef"] == {
        "name": "event-router-redis",
        "key": "redis-url",
    }
    assert "replicas" not in router["spec"], "the HPA owns the replica count"
    assert env["EVENT_ROUTER_AUTH"]["value"] == "/etc/event-router/auth/auth.yaml"
    assert not find(objects, "StatefulSet"), "no bundled Redis in external mode"
    (hpa,) = find(objects, "HorizontalPodAutoscaler")
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "External"]
    assert find(objects, "ServiceMonitor") and find(objects, "NetworkPolicy")
    (dashboard,) = [o for o in find(objects, "ConfigMap") if "event-router.json" in o.get("data", {})]
    assert json.loads(dashboard["data"]["event-router.json"]) == json.loads(
        (ROOT / "deploy" / "grafana" / "event-router.json").read_text()
    )
    # Watching one namespace: a Role there instead of a ClusterRole.
    assert not find(objects, "ClusterRole")
    assert any(r["metadata"].get("namespace") == "agents" for r in find(objects, "Role"))


def test_bundled_redis_keeps_an_append_only_file():
    objects = render()
    (redis,) = find(objects, "StatefulSet", "redis")
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    (config,) = [o for o in find(objects, "ConfigMap", "redis")]
    assert "appendonly yes" in config["data"]["redis.conf"]


def test_operator_rbac_is_least_privilege():
    objects = render()
    (role,) = find(objects, "ClusterRole")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert all(g in {"eventrouter.dev", "events.k8s.io"} for g, _, _ in granted), granted
    assert not any(v in {"*", "delete", "deletecollection"} for _, _, v in granted), granted
    assert not any("secrets" in r for _, r, _ in granted)
    leases = [r for r in find(objects, "Role") if any("leases" in rule["resources"] for rule in r["rules"])]
    assert leases and leases[0]["metadata"]["namespace"] == "events"


def test_helm_test_hook_publishes_and_receives_through_the_service():
    objects = render()
    (pod,) = [o for o in find(objects, "Pod") if o["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    args = pod["spec"]["containers"][0]["args"]
    assert args[0] == "bench" and args[args.index("--url") + 1] == "http://er-event-router:8080"
    assert pod["spec"]["restartPolicy"] == "Never"


def test_notes_tell_the_user_how_to_reach_the_router_and_publish():
    chart = helm.Chart.load(str(CHART))
    notes = chart.render(None, name="er", namespace="events", is_install=True)["event-router/templates/NOTES.txt"]
    assert "kubectl -n events port-forward svc/er-event-router 8080:8080" in notes
    assert "/api/v1/events" in notes and "helm test er" in notes


BAD_VALUES = [
    ({"router": {"replicas": "two"}}, "replicas"),
    ({"redis": {"mode": "cluster"}}, "mode"),
    ({"routr": {"replicas": 2}}, "routr"),
    ({"redis": {"mode": "external"}}, "existingSecret"),
    ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"service": {"port": 70000}}, "port"),
]


@pytest.mark.parametrize("bad,names", BAD_VALUES, ids=[n for _, n in BAD_VALUES])
def test_values_schema_rejects_bad_values_naming_the_key(bad, names):
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError) as e:
        chart.render(bad, name="er", namespace="events", is_install=True)
    assert names in str(e.value), str(e.value)


def test_values_schema_accepts_the_shipped_values():
    chart = helm.Chart.load(str(CHART))
    for path in [None, *CI_VALUES]:
        chart.validate_schema(chart.merge_values(values_file(path)))


def test_impossible_combinations_fail_rendering_with_an_explanation():
    cases = [
        ({"router": {"terminationGracePeriodSeconds": 10}}, "terminationGracePeriodSeconds"),
        ({"redis": {"mode": "none"}}, "operator.enabled"),
        ({"redis": {"mode": "none"}, "operator": {"enabled": False}}, "router.replicas=1"),
    ]
    for values, names in cases:
        with pytest.raises(helm.HelmError) as e:
            render(values)
        assert names in str(e.value), (values, str(e.value))


def test_chart_crds_are_byte_identical_to_crd_dir():
    chart_crds = sorted(p.name for p in (CHART / "crds").iterdir())
    generated = sorted(p.name for p in (ROOT / "crd").glob("*.yaml") if p.name != "kustomization.yaml")
    assert chart_crds == generated
    for name in generated:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crd" / name).read_bytes(), name


def test_chart_dashboard_is_byte_identical_to_deploy_grafana():
    assert (CHART / "dashboards" / "event-router.json").read_bytes() == (
        ROOT / "deploy" / "grafana" / "event-router.json"
    ).read_bytes()


# --- kustomize ------------------------------------------------------------


def test_every_deploy_kustomization_builds_and_validates():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is required for `kubectl kustomize` (scripts/test.sh checks for it)")
    assert {p.relative_to(ROOT).as_posix() for p in OVERLAYS} >= {
        "deploy/base",
        "deploy/overlays/dev",
        "deploy/overlays/prod",
        "deploy/observability",
    }
    for overlay in OVERLAYS:
        out = subprocess.run(
            [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, (overlay, out.stderr)
        objects = documents(out.stdout)
        assert validate_all(objects) == len(objects), overlay


def test_overlays_differ_where_they_should():
    def build(name):
        out = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy" / "overlays" / name)], capture_output=True, text=True, check=True)
        return documents(out.stdout)

    dev, prod = build("dev"), build("prod")
    for objects in (dev, prod):
        (operator,) = find(objects, "Deployment", "operator")
        (c,) = operator["spec"]["template"]["spec"]["containers"]
        operator_probe_port(c)
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert find(dev, "StatefulSet", "redis") and not find(prod, "StatefulSet")
    assert find(prod, "HorizontalPodAutoscaler") and not find(dev, "HorizontalPodAutoscaler")
    assert [s["metadata"]["name"] for s in find(dev, "Secret")] == ["event-router-redis"]
    assert not find(prod, "Secret"), "prod takes the Redis URL from a Secret the user creates"
    for objects in (dev, prod):
        assert {o["metadata"].get("namespace") for o in objects if o["kind"] not in {
            "Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}} == {"event-router"}


# --- Dockerfile -----------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_with_a_cached_dependency_layer():
    steps = dockerfile()
    stages = [rest for word, rest in steps if word == "FROM"]
    assert len(stages) >= 2, stages
    # The manifest is copied and built before the sources are.
    copies = [rest for word, rest in steps if word == "COPY"]
    first_src = next(i for i, c in enumerate(copies) if c.startswith("src"))
    assert copies[0].startswith("Cargo.toml Cargo.lock"), copies
    assert first_src > 0
    runs_before_src = [r for w, r in steps[: steps.index(("COPY", copies[first_src]))] if w == "RUN"]
    assert any("cargo build --release --locked" in r for r in runs_before_src)
    assert any(c.startswith("--from=") for c in copies), "the runtime stage copies only the binary"


def test_dockerfile_runs_as_non_root_with_entrypoint_ports_and_labels():
    steps = dockerfile()
    last_from = max(i for i, (w, _) in enumerate(steps) if w == "FROM")
    runtime = steps[last_from:]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, users
    assert ("ENTRYPOINT", '["/usr/local/bin/event-router"]') in runtime
    assert any(w == "EXPOSE" and "8080" in r for w, r in runtime)
    labels = " ".join(r for w, r in runtime if w == "LABEL")
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_dockerfile_pins_base_images_and_never_uses_latest():
    args = dict(
        rest.split("=", 1) for word, rest in dockerfile() if word == "ARG" and "=" in rest
    )
    for word, rest in dockerfile():
        if word != "FROM":
            continue
        image = rest.split()[0]
        if image in {"deps", "build"}:
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert ":" in image and not image.endswith(":latest"), image


def test_dockerignore_keeps_the_build_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "target/" in ignored and ".git/" in ignored
