#!/usr/bin/env python3
"""Tests of the Helm chart deploy/helm/berth and of deploy/kubernetes/berth.yaml.

Run through deploy/test/run (make test-deploy), which provides the pinned packages: Helm's own
Go library (helm-python-sdk) renders and lints, kubernetes-validate holds the Kubernetes API
schemas. No cluster and no helm binary are needed.

    chart_test.py                    run every check; one line each, then a count
    chart_test.py --write-manifests  rewrite deploy/kubernetes/berth.yaml (make manifests)

With BERTHD set to a berthd binary, each rendered config.toml must pass `berthd config check`.
"""

import difflib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import referencing
import yaml

TOP = Path(__file__).resolve().parents[2]
CHART = TOP / "deploy/helm/berth"
VALUES_DIR = TOP / "deploy/test/values"
SCHEMAS_DIR = TOP / "deploy/test/schemas"
MANIFEST = TOP / "deploy/kubernetes/berth.yaml"
RELEASE = "berth"
NAMESPACE = "kube-system"

# The Kubernetes versions the chart is checked against: from Chart.yaml's kubeVersion floor to
# the newest kubernetes-validate ships. The first one must match the floor (checked below).
KUBERNETES_VERSIONS = [
    "1.26", "1.27", "1.28", "1.29", "1.30", "1.31",
    "1.32", "1.33", "1.34", "1.35", "1.36", "1.37",
]

# Kinds kubernetes-validate does not know, checked against schemas/<kind>.json instead.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

# Where berthd registers its metric families (`registry.register("name", …)`).
METRIC_SOURCES = ["cri", "image", "cni", "podsandbox", "streaming", "src", "common"]

# The hosts.toml files values/systemd-mirrors.yaml must render to, byte for byte.
MIRRORS_EXPECTED = {
    "docker.io": """\
server = "https://registry-1.docker.io"

[host."http://10.0.0.5:5000"]
capabilities = ["pull", "resolve"]
skip_verify = false
""",
    "registry.local:5000": """\
[host."https://mirror-a.local"]
capabilities = ["pull"]
skip_verify = true
ca = "/etc/berth/mirror-a.pem"

[host."https://mirror-b.local/v2/library"]
capabilities = ["pull", "resolve"]
skip_verify = false
override_path = true
""",
}

# Values that must not render, and a piece of the message each must fail with.
MUST_FAIL = [
    ("action neither install nor uninstall",
     {"action": "reinstall"},
     'action must be "install" or "uninstall", not "reinstall"'),
    ("ServiceMonitor with the loopback metrics address",
     {"metrics": {"serviceMonitor": {"enabled": True}}},
     'config.metricsAddress "127.0.0.1:9810" cannot be reached from outside the node'),
    ("PodMonitor with the metrics endpoint off",
     {"metrics": {"podMonitor": {"enabled": True}}, "config": {"metricsAddress": ""}},
     'config.metricsAddress "" cannot be reached from outside the node'),
    ("Service on another loopback address",
     {"metrics": {"service": {"enabled": True}}, "config": {"metricsAddress": "127.0.0.2:9810"}},
     "cannot be reached from outside the node"),
    ("unknown cgroup driver",
     {"config": {"cgroupDriver": "systemD"}},
     'config.cgroupDriver must be "systemd" or "cgroupfs"'),
    ("extra TOML repeating a table the chart writes",
     {"config": {"extra": "[runtime]\ncgroup_driver = \"cgroupfs\"\n"}},
     "config.extra repeats the table [runtime]"),
    ("extra TOML with keys before its first table",
     {"config": {"extra": "# tuning\nqueue = 5\n[events]\n"}},
     "config.extra must start with a table header"),
    ("a relative root",
     {"config": {"root": "var/lib/berth"}},
     "config.root must be an absolute path or null"),
    ("mirror capabilities that are no list",
     {"registryMirrors": {"docker.io": {"mirrors": [{"url": "https://m", "capabilities": "pull"}]}}},
     "registryMirrors.docker.io.mirrors[0].capabilities must be a list"),
    ("negative socket gid",
     {"config": {"socketGid": -5}},
     "config.socketGid must be a whole number or null"),
    ("a registry in both registryHosts and registryMirrors",
     {"registryHosts": {"docker.io": "server = \"https://x\"\n"},
      "registryMirrors": {"docker.io": {"mirrors": [{"url": "https://m"}]}}},
     'registry host "docker.io" is in both registryHosts and registryMirrors'),
    ("a mirror URL that is not http(s)",
     {"registryMirrors": {"docker.io": {"mirrors": [{"url": "registry.local"}]}}},
     "registryMirrors.docker.io.mirrors[0].url must be an http:// or https:// URL"),
    ("an unknown key in a mirror",
     {"registryMirrors": {"docker.io": {"mirrors": [{"url": "https://m", "skip_verify": True}]}}},
     'registryMirrors.docker.io.mirrors[0]: unknown key "skip_verify"'),
    ("a registry host that is no host name",
     {"registryHosts": {"https://docker.io": "server = \"https://x\"\n"}},
     'registry host "https://docker.io" is not a host name or host:port'),
    ("alert rules with no job to watch",
     {"metrics": {"prometheusRule": {"enabled": True}}},
     "set metrics.prometheusRule.job"),
]

# What the API server checks beyond the OpenAPI schemas (apimachinery's validation).
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class Failed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise Failed(message)


def fail(message):
    raise Failed(message)


class Results:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def check(self, name, fn, *args):
        """Runs fn(*args); a returned string is shown after the name."""
        try:
            detail = fn(*args)
        except Failed as e:
            self.failed += 1
            print(f"FAIL {name}: {e}", flush=True)
            return
        except Exception as e:  # a crash in a check is its failure, not the run's end
            self.failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            return
        self.passed += 1
        print(f"ok   {name}" + (f" ({detail})" if detail else ""), flush=True)

    def skip(self, name, why):
        self.skipped += 1
        print(f"skip {name}: {why}", flush=True)


# --- rendering --------------------------------------------------------------------------------

def render(chart, values):
    """The chart's manifests as {template path: text}, NOTES.txt and empty files left out."""
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return {path: text.strip() + "\n" for path, text in sorted(out.items())
            if path.endswith(".yaml") and text.strip()}


def objects(manifests):
    return [obj for text in manifests.values() for obj in yaml.safe_load_all(text) if obj]


def find(objs, kind, suffix=""):
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    expect(len(found) == 1, f"expected one {kind} named *{suffix}, found {len(found)}")
    return found[0]


# The order `helm install` creates kinds in, which kubectl apply of the file then follows.
KIND_ORDER = ["ConfigMap", "Service", "DaemonSet", "ServiceMonitor", "PodMonitor",
              "PrometheusRule"]


def manifest_text(manifests):
    def key(item):
        kind = yaml.safe_load(item[1])["kind"]
        return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), item[0])

    header = (
        "# Generated by `make manifests` (deploy/test/render-manifests) from the Helm chart\n"
        f"# deploy/helm/berth with its default values, release {RELEASE}, namespace {NAMESPACE}.\n"
        "# Do not edit by hand: change the chart and run `make manifests`. `make test-deploy`\n"
        "# fails while this file differs from a fresh render.\n"
    )
    parts = [f"---\n# Source: {path}\n{text}" for path, text in sorted(manifests.items(), key=key)]
    return header + "".join(parts)


# --- checks -----------------------------------------------------------------------------------

def check_versions():
    shipped = {kubernetes_validate.utils.major_minor(v)
               for v in kubernetes_validate.utils.all_versions()}
    missing = [v for v in KUBERNETES_VERSIONS if v not in shipped]
    expect(not missing, f"kubernetes-validate ships no schemas for {missing}")
    floor = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    m = re.match(r"^>=\s*(\d+\.\d+)\.", floor)
    expect(m and m.group(1) == KUBERNETES_VERSIONS[0],
           f"Chart.yaml kubeVersion {floor!r} and the first tested version "
           f"{KUBERNETES_VERSIONS[0]} differ")
    return f"{KUBERNETES_VERSIONS[0]} to {KUBERNETES_VERSIONS[-1]}"


def check_lint(values):
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    bad = [f"[{m['severity']}] {m['path']}: {m['error']}" for m in report["messages"]
           if m["severity"] >= 2]
    # errors repeats the messages' failures; it stands alone only when linting itself failed.
    expect(not bad and not report["errors"], "; ".join(bad or report["errors"]))
    infos = [m["error"] for m in report["messages"] if m["severity"] < 2]
    return "; ".join(infos) if infos else ""


def crd_validators():
    schemas = [json.loads(p.read_text()) for p in sorted(SCHEMAS_DIR.glob("*.json"))]
    registry = referencing.Registry().with_resources(
        (s["$id"], referencing.Resource.from_contents(s)) for s in schemas)
    by_kind = {}
    for s in schemas:
        kind = s.get("properties", {}).get("kind", {}).get("const")
        if kind:
            by_kind[kind] = jsonschema.Draft202012Validator(s, registry=registry)
    expect(set(by_kind) == CRD_KINDS, f"schemas/ covers {sorted(by_kind)}, not {sorted(CRD_KINDS)}")
    return by_kind


def check_schemas(objs, crds):
    errors = {}  # message: the Kubernetes versions that gave it
    for obj in objs:
        what = f"{obj['kind']} {obj['metadata']['name']}"
        if obj["kind"] in CRD_KINDS:
            for e in crds[obj["kind"]].iter_errors(obj):
                path = ".".join(map(str, e.absolute_path))
                errors.setdefault(f"{what}: {path}: {e.message}", ["schemas/"])
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(map(str, e.path))
                errors.setdefault(f"{what}: {path}: {e.message}", []).append(version)
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.setdefault(f"{what}: {e.message}", []).append(version)
    expect(not errors, "; ".join(f"{message} (on {', '.join(where)})"
                                 for message, where in errors.items()))
    kinds = sorted(o["kind"] for o in objs)
    return f"{len(objs)} objects: {', '.join(kinds)}"


def check_api_rules(objs):
    """Names, labels and ConfigMap keys as the API server would take them."""
    for obj in objs:
        meta = obj["metadata"]
        what = f"{obj['kind']} {meta.get('name')}"
        # A Service's name is a DNS-1035 label; the others' are subdomains, kept to 63 here
        # because they also appear as label values.
        pattern = DNS_1035_LABEL if obj["kind"] == "Service" else DNS_SUBDOMAIN
        expect(pattern.match(meta["name"]) and len(meta["name"]) <= 63, f"{what}: bad name")
        expect(meta.get("namespace") == NAMESPACE, f"{what}: namespace is not {NAMESPACE}")
        labels = dict(meta.get("labels") or {})
        if obj["kind"] == "DaemonSet":
            labels.update(obj["spec"]["template"]["metadata"].get("labels") or {})
        for k, v in labels.items():
            prefix, _, name = k.rpartition("/")
            expect(LABEL_NAME.match(name) and len(name) <= 63, f"{what}: bad label name {k!r}")
            expect(not prefix or (DNS_SUBDOMAIN.match(prefix) and len(prefix) <= 253),
                   f"{what}: bad label prefix {k!r}")
            expect(isinstance(v, str) and LABEL_VALUE.match(v) and len(v) <= 63,
                   f"{what}: bad label value {k}={v!r}")
        if obj["kind"] == "ConfigMap":
            for key in obj.get("data") or {}:
                expect(CONFIGMAP_KEY.match(key), f"{what}: bad key {key!r}")
    return ""


def check_daemonset(objs, merged, app_version):
    ds = find(objs, "DaemonSet")
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    expect(spec["updateStrategy"] == {"type": "RollingUpdate",
                                      "rollingUpdate": {"maxUnavailable": 1}},
           f"updateStrategy is {spec['updateStrategy']}")
    expect(spec["selector"]["matchLabels"].items()
           <= spec["template"]["metadata"]["labels"].items(),
           "the selector does not match the pod template's labels")
    expect(pod.get("hostPID") is True, "hostPID is not true")
    expect(pod.get("hostNetwork") is True, "hostNetwork is not true")
    expect(pod.get("dnsPolicy") == "ClusterFirstWithHostNet", "dnsPolicy")
    expect(pod.get("priorityClassName") == (merged["priorityClassName"] or None),
           f"priorityClassName {pod.get('priorityClassName')!r}")
    expect(pod.get("terminationGracePeriodSeconds") == merged["terminationGracePeriodSeconds"],
           "terminationGracePeriodSeconds")
    expect(pod.get("nodeSelector") == (merged["nodeSelector"] or None), "nodeSelector")
    expect(pod.get("tolerations") == (merged["tolerations"] or None), "tolerations")
    expect(pod.get("affinity") == (merged["affinity"] or None), "affinity")
    expect(pod.get("imagePullSecrets") == (merged["imagePullSecrets"] or None),
           "imagePullSecrets")
    annotations = spec["template"]["metadata"]["annotations"]
    expect(re.fullmatch(r"[0-9a-f]{64}", annotations.get("checksum/config", "")) and
           re.fullmatch(r"[0-9a-f]{64}", annotations.get("checksum/registry-hosts", "")),
           "no checksum/config and checksum/registry-hosts annotations")
    expect(merged["podAnnotations"].items() <= annotations.items(), "podAnnotations")

    (c,) = pod["containers"]
    expect(c["securityContext"] == {"privileged": True}, f"securityContext {c['securityContext']}")
    image = merged["image"]
    want = f"{image['repository']}:{image['tag'] or app_version}"
    expect(c["image"] == want, f"image {c['image']}, want {want}")
    expect(c["imagePullPolicy"] == image["pullPolicy"], "imagePullPolicy")
    expect(c.get("args") == [merged["action"]], f"args {c.get('args')} for {merged['action']}")
    expect("command" not in c, "command overrides the image's entrypoint")
    expect(c.get("resources") == (merged["resources"] or None), "resources")
    probe = c["readinessProbe"]["exec"]["command"]
    if merged["action"] == "install":
        expect(probe == ["/opt/berth/install.sh", "health"], f"readiness probe {probe}")
    else:
        expect(probe[:2] == ["/bin/sh", "-c"] and "! /opt/berth/install.sh health" in probe[2],
               f"uninstall's readiness probe {probe}")
    env = {e["name"]: e["value"] for e in c["env"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    host = mounts.get(env.get("BERTH_HOST_ROOT"))
    expect(env.get("BERTH_HOST_ROOT") == "/host" and host, "no mount at BERTH_HOST_ROOT /host")
    expect(host.get("mountPropagation") == "HostToContainer" and not host.get("readOnly"),
           f"/host mount {host}")
    expect(volumes[host["name"]].get("hostPath", {}).get("path") == "/",
           "/host is not the node's /")
    config = mounts.get(env.get("BERTH_CONFIG"))
    expect(config and config.get("subPath") == "config.toml",
           f"BERTH_CONFIG {env.get('BERTH_CONFIG')} is not the ConfigMap's config.toml")
    expect(volumes[config["name"]]["configMap"]["name"] == find(objs, "ConfigMap", "-config")
           ["metadata"]["name"], "the config volume is not the config ConfigMap")
    certs = mounts.get(env.get("BERTH_CERTS_D"))
    expect(certs and env["BERTH_CERTS_D"] == "/etc/berth-install/certs.d",
           "BERTH_CERTS_D is not a mount")
    hosts_cm = find(objs, "ConfigMap", "-registry-hosts")
    volume = volumes[certs["name"]]["configMap"]
    expect(volume["name"] == hosts_cm["metadata"]["name"],
           "the certs.d volume is not the registry-hosts ConfigMap")
    data = hosts_cm.get("data") or {}
    items = {i["key"]: i["path"] for i in volume.get("items", [])}
    expect(set(items) == set(data), f"volume items {sorted(items)} != keys {sorted(data)}")
    for key, path in items.items():
        expect(re.fullmatch(r"[^/]+/hosts\.toml", path), f"item path {path}")
        expect(key == path.split("/")[0].replace(":", "_") + ".toml",
               f"key {key} lands at {path}")
    ports = c.get("ports") or []
    scraped = merged["action"] == "install" and any(
        merged["metrics"][m]["enabled"] for m in ("service", "serviceMonitor", "podMonitor"))
    expect(bool(ports) == scraped, f"container ports {ports} with scraping {scraped}")
    return f"action {merged['action']}, image {c['image']}"


def registry_files(objs):
    """The registry host files as the installer will see them: {host: hosts.toml text}."""
    data = find(objs, "ConfigMap", "-registry-hosts").get("data") or {}
    ds = find(objs, "DaemonSet")
    volume = next(v["configMap"] for v in ds["spec"]["template"]["spec"]["volumes"]
                  if v.get("configMap", {}).get("name", "").endswith("-registry-hosts"))
    return {i["path"].split("/")[0]: data[i["key"]] for i in volume.get("items", [])}


def check_toml(objs):
    config = find(objs, "ConfigMap", "-config")["data"]["config.toml"]
    try:
        parsed = tomllib.loads(config)
    except tomllib.TOMLDecodeError as e:
        raise Failed(f"config.toml: {e}")
    expect(parsed.get("registry", {}).get("config_path") == "/etc/berth/certs.d",
           "[registry] config_path is not /etc/berth/certs.d, where the installer writes")
    files = registry_files(objs)
    for host, text in files.items():
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise Failed(f"{host}/hosts.toml: {e}")
    return f"config.toml and {len(files)} hosts.toml"


def check_config_values(objs, merged):
    """config.toml says what the values say."""
    parsed = tomllib.loads(find(objs, "ConfigMap", "-config")["data"]["config.toml"])
    c = merged["config"]
    want = {
        ("metrics", "address"): c["metricsAddress"],
        ("log", "level"): c["logLevel"],
        ("log", "format"): c["logFormat"],
        ("cni", "conf_dir"): c["cni"]["confDir"],
        ("cni", "bin_dirs"): c["cni"]["binDirs"],
        ("registry", "max_concurrent_downloads"): c["maxConcurrentDownloads"],
        ("runtime", "cgroup_driver"): c["cgroupDriver"],
        ("runtime", "default_seccomp"): c["defaultSeccomp"],
    }
    for (table, key), value in want.items():
        got = parsed.get(table, {}).get(key)
        expect(got == value, f"[{table}] {key} is {got!r}, values say {value!r}")
    # Helm drops a null value when it merges, so an unset socketGid is no key at all.
    for key in ("root", "state"):
        expect(parsed.get(key) == c.get(key), f"{key} is {parsed.get(key)!r}, values say {c.get(key)!r}")
    gid = parsed.get("grpc", {}).get("gid")
    expect(gid == c.get("socketGid"), f"[grpc] gid is {gid!r}, values say {c.get('socketGid')!r}")
    if c["extra"]:
        extra = tomllib.loads(c["extra"])
        for table, keys in extra.items():
            expect(parsed.get(table) == keys, f"config.extra's [{table}] is not in config.toml")
    return ""


def check_berthd(objs, berthd):
    config = find(objs, "ConfigMap", "-config")["data"]["config.toml"]
    with tempfile.NamedTemporaryFile("w", suffix=".toml", prefix="berth-chart-") as f:
        f.write(config)
        f.flush()
        r = subprocess.run([berthd, "config", "check", f.name], capture_output=True, text=True,
                           timeout=30)
    expect(r.returncode == 0,
           f"`berthd config check` exited {r.returncode}: {(r.stderr or r.stdout).strip()}")
    return ""


def check_mirrors(objs):
    files = registry_files(objs)
    expect(set(files) == set(MIRRORS_EXPECTED), f"hosts {sorted(files)}")
    for host, want in MIRRORS_EXPECTED.items():
        if files[host] != want:
            diff = "".join(difflib.unified_diff(want.splitlines(True), files[host].splitlines(True),
                                                "expected", "rendered"))
            raise Failed(f"{host}/hosts.toml differs:\n{diff}")
    return f"{len(files)} files"


def check_monitoring(objs, merged):
    kinds = {o["kind"] for o in objs}
    m = merged["metrics"]
    installing = merged["action"] == "install"
    want = {
        "Service": installing and (m["service"]["enabled"] or m["serviceMonitor"]["enabled"]),
        "ServiceMonitor": installing and m["serviceMonitor"]["enabled"],
        "PodMonitor": installing and m["podMonitor"]["enabled"],
        "PrometheusRule": installing and m["prometheusRule"]["enabled"],
    }
    for kind, wanted in want.items():
        expect((kind in kinds) == wanted, f"{kind} rendered: {kind in kinds}, want {wanted}")
    if want["Service"]:
        svc = find(objs, "Service")
        ds = find(objs, "DaemonSet")
        expect(svc["spec"]["clusterIP"] == "None", "the Service is not headless")
        expect(svc["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"],
               "the Service does not select the installer pods")
        (port,) = svc["spec"]["ports"]
        expect(port["name"] == "metrics" and port["targetPort"] == "metrics" and
               str(port["port"]) == merged["config"]["metricsAddress"].rsplit(":", 1)[1],
               f"Service port {port}")
    if want["ServiceMonitor"]:
        sm = find(objs, "ServiceMonitor")
        svc = find(objs, "Service")
        expect(sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(),
               "the ServiceMonitor does not select the Service")
    if want["PrometheusRule"]:
        rule = find(objs, "PrometheusRule")
        alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
        for name in ["BerthDown", "BerthImagePullFailuresRising", "BerthContainerOOMKills",
                     "BerthCNIErrors", "BerthMonitorCrashes"]:
            expect(name in alerts, f"no alert {name}")
        for name, r in alerts.items():
            expect(r["labels"].get("severity") in ("critical", "warning", "info"),
                   f"{name}: severity")
            expect(r["annotations"].get("summary") and r["annotations"].get("description"),
                   f"{name}: summary and description")
        job = (find(objs, "Service")["metadata"]["name"] if want["ServiceMonitor"]
               else f"{NAMESPACE}/{find(objs, 'PodMonitor')['metadata']['name']}")
        expect(alerts["BerthDown"]["expr"] == f'up{{job="{job}"}} == 0',
               f"BerthDown watches {alerts['BerthDown']['expr']}, not the monitor's job {job}")
    return ", ".join(sorted(k for k, v in want.items() if v)) or "none"


REGISTER = re.compile(
    r'registry\s*\.register\(\s*"([a-z0-9_]+)"\s*,\s*"(?:[^"\\]|\\.)*"\s*,\s*([^;]*?)\s*,?\s*\)\s*;')


def registered_metrics():
    """{family name: counter | histogram | gauge | None} from berthd's sources. The type is read
    off the declaration of what is registered (a struct field or a local)."""
    families = {}
    for d in METRIC_SOURCES:
        for path in (TOP / d).rglob("*.rs"):
            text = path.read_text()
            for name, arg in REGISTER.findall(text):
                ident = re.sub(r"\.clone\(\)$", "", arg).split(".")[-1]
                kind = None
                for decl in re.findall(rf"\b{re.escape(ident)}\s*(?::|=)\s*([^,;\n]+(?:,[^,;\n]+)*)",
                                       text):
                    for word, k in (("Histogram", "histogram"), ("Counter", "counter"),
                                    ("Gauge", "gauge")):
                        if word in decl:
                            kind = k
                            break
                    if kind:
                        break
                families[name] = kind
    return families


# How Prometheus sees each kind of family: prometheus-client's text encoder adds `_total` to a
# counter's name and `_bucket`, `_sum`, `_count` to a histogram's.
SERIES_SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                   "gauge": [""]}


def check_alert_metrics(objs):
    """Every series an alert reads is one berthd exposes, under its exposed name."""
    families = registered_metrics()
    expect(len(families) > 10, f"found only {sorted(families)} in the Rust sources")
    series = {name + suffix: (name, kind) for name, kind in families.items()
              for suffix in SERIES_SUFFIXES.get(kind, [""])}
    rule = find(objs, "PrometheusRule")
    used = set()
    for g in rule["spec"]["groups"]:
        for r in g["rules"]:
            used.update(re.findall(r"\bberth_[a-z0-9_]+", r["expr"]))
    for name in sorted(used):
        expect(name in series, f"{name} is no series berthd exposes")
        family, kind = series[name]
        expect(kind, f"the type of {family} could not be read off the sources")
    return ", ".join(f"{n} ({series[n][1]})" for n in sorted(used))


def check_checksums(chart):
    def annotations(values):
        ds = find(objects(render(chart, values)), "DaemonSet")
        a = ds["spec"]["template"]["metadata"]["annotations"]
        return a["checksum/config"], a["checksum/registry-hosts"]

    base = annotations({})
    expect(annotations({}) == base, "the same values give another checksum")
    config = annotations({"config": {"logLevel": "debug"}})
    expect(config[0] != base[0], "a config change leaves checksum/config as it was")
    expect(config[1] == base[1], "a config change moves checksum/registry-hosts")
    hosts = annotations({"registryHosts": {"docker.io": "server = \"https://x\"\n"}})
    expect(hosts[1] != base[1], "a registry change leaves checksum/registry-hosts as it was")
    expect(hosts[0] == base[0], "a registry change moves checksum/config")
    other = annotations({"podAnnotations": {"a": "b"}, "image": {"tag": "9.9.9"}})
    expect(other == base, "values outside the ConfigMaps move the checksums")
    return ""


def check_fails(chart, values, message):
    try:
        render(chart, values)
    except helm.HelmRenderError as e:
        expect(message in str(e), f"failed, but with: {e}")
        return ""
    raise Failed(f"rendered; want a failure saying {message!r}")


def check_manifest(chart):
    fresh = manifest_text(render(chart, {}))
    expect(MANIFEST.exists(), f"{MANIFEST.relative_to(TOP)} is missing: run make manifests")
    current = MANIFEST.read_text()
    if current != fresh:
        diff = list(difflib.unified_diff(current.splitlines(True), fresh.splitlines(True),
                                         str(MANIFEST.relative_to(TOP)), "fresh render"))
        raise Failed("differs from a fresh render: run make manifests\n" + "".join(diff[:40]))
    return ""


# --- main -------------------------------------------------------------------------------------

def cases():
    yield "default", {}
    for path in sorted(VALUES_DIR.glob("*.yaml")):
        yield path.name, yaml.safe_load(path.read_text()) or {}


def main():
    # Helm logs every template `fail` at INFO on stderr; the checks report those themselves.
    helm.enable_logging(logging.WARNING)
    with helm.Chart.load(CHART) as chart:
        if sys.argv[1:] == ["--write-manifests"]:
            MANIFEST.parent.mkdir(parents=True, exist_ok=True)
            MANIFEST.write_text(manifest_text(render(chart, {})))
            print(f"wrote {MANIFEST.relative_to(TOP)}")
            return 0
        if sys.argv[1:]:
            print(__doc__, file=sys.stderr)
            return 2

        results = Results()
        results.check("Kubernetes versions", check_versions)
        crds = crd_validators()
        berthd = os.environ.get("BERTHD")
        if berthd:
            berthd = str(Path(berthd).resolve())
            if not os.access(berthd, os.X_OK):
                print(f"FAIL BERTHD={berthd} is not an executable file")
                return 1
        for name, values in cases():
            try:
                manifests = render(chart, values)
            except helm.HelmError as e:
                results.check(f"{name}: render", fail, str(e))
                continue
            objs = objects(manifests)
            merged = chart.merge_values(values)
            results.check(f"{name}: render", lambda: f"{len(objs)} objects")
            results.check(f"{name}: helm lint --strict", check_lint, values)
            results.check(f"{name}: strict schemas", check_schemas, objs, crds)
            results.check(f"{name}: API server name, label and key rules", check_api_rules, objs)
            results.check(f"{name}: DaemonSet", check_daemonset, objs, merged,
                          chart.metadata["appVersion"])
            results.check(f"{name}: TOML files parse", check_toml, objs)
            results.check(f"{name}: config.toml follows the values", check_config_values, objs,
                          merged)
            results.check(f"{name}: monitoring objects", check_monitoring, objs, merged)
            if any(o["kind"] == "PrometheusRule" for o in objs):
                results.check(f"{name}: alert series exist in berthd", check_alert_metrics, objs)
            if name == "systemd-mirrors.yaml":
                results.check(f"{name}: mirrors' hosts.toml text", check_mirrors, objs)
            if berthd:
                results.check(f"{name}: berthd config check", check_berthd, objs, berthd)
            else:
                results.skip(f"{name}: berthd config check", "BERTHD not set")
        results.check("checksum annotations follow the ConfigMaps", check_checksums, chart)
        for what, values, message in MUST_FAIL:
            results.check(f"refused: {what}", check_fails, chart, values, message)
        results.check(f"{MANIFEST.relative_to(TOP)} is a fresh render", check_manifest, chart)

    line = f"{results.passed} passed, {results.failed} failed"
    if results.skipped:
        line += f", {results.skipped} skipped"
    print(line)
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
