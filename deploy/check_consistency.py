"""Cross-resource checks that a schema cannot make, on one rendered kustomization (stdin).

A schema says each object is well formed; this says they fit together: selectors find pods,
autoscalers find their Deployment, probes and scrape annotations name real ports, `$(VAR)`
references resolve, referenced ConfigMaps and Secrets exist, and the grace period covers the
preStop pause plus the drain bound.
"""

import re
import sys

import yaml

# Supplied by the operator (deploy/secret.example.yaml), so absent from rendered production output.
OPERATOR_SECRETS = {"openclaw-secrets"}
# Seconds left to the process after the preStop pause and the drain bound, before SIGKILL.
EXIT_MARGIN_SECONDS = 5
VAR_REF = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

problems = []


def problem(resource, message):
    problems.append(f"{resource['kind']}/{resource['metadata']['name']}: {message}")


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
workloads = {**by_kind.get("Deployment", {}), **by_kind.get("StatefulSet", {})}
config_maps = by_kind.get("ConfigMap", {})
secrets = set(by_kind.get("Secret", {})) | OPERATOR_SECRETS
pod_labels = [w["spec"]["template"]["metadata"].get("labels", {}) for w in workloads.values()]

for kind, field in (("Service", ("spec", "selector")),
                    ("PodDisruptionBudget", ("spec", "selector", "matchLabels")),
                    ("NetworkPolicy", ("spec", "podSelector", "matchLabels"))):
    for r in by_kind.get(kind, {}).values():
        selector = r
        for key in field:
            selector = (selector or {}).get(key)
        if not any(matches(selector, labels) for labels in pod_labels):
            problem(r, f"selector {selector} matches no pod template")

hpa_targets = set()
for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
    target = hpa["spec"]["scaleTargetRef"]
    hpa_targets.add(target["name"])
    if target["name"] not in by_kind.get(target["kind"], {}):
        problem(hpa, f"scales {target['kind']}/{target['name']}, which is not rendered")

for w in workloads.values():
    spec = w["spec"]
    if w["kind"] == "Deployment" and w["metadata"]["name"] in hpa_targets and "replicas" in spec:
        problem(w, "sets replicas although an autoscaler owns the count (each apply would reset it)")
    if not matches(spec["selector"]["matchLabels"], spec["template"]["metadata"].get("labels", {})):
        problem(w, "selector does not match its own pod template")
    pod = spec["template"]["spec"]
    annotations = spec["template"]["metadata"].get("annotations", {})
    grace = pod.get("terminationGracePeriodSeconds", 30)
    container_ports = set()
    for c in pod["containers"]:
        ports = {p["containerPort"] for p in c.get("ports", [])}
        names = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
        container_ports |= ports
        env_config = {}
        for source in c.get("envFrom", []):
            ref = source.get("configMapRef") or source.get("secretRef")
            if "configMapRef" in source:
                if ref["name"] not in config_maps:
                    problem(w, f"{c['name']} reads ConfigMap {ref['name']}, which is not rendered")
                else:
                    env_config.update(config_maps[ref["name"]].get("data", {}))
            elif ref["name"] not in secrets:
                problem(w, f"{c['name']} reads Secret {ref['name']}, which is not rendered")
        defined = set()
        for e in c.get("env", []):
            for var in VAR_REF.findall(e.get("value", "")):
                if var not in defined:
                    problem(w, f"{c['name']} env {e['name']} uses $({var}) before it is defined")
            ref = e.get("valueFrom", {})
            if "secretKeyRef" in ref and ref["secretKeyRef"]["name"] not in secrets:
                problem(w, f"{c['name']} env {e['name']} reads Secret {ref['secretKeyRef']['name']}, which is not rendered")
            if "configMapKeyRef" in ref and ref["configMapKeyRef"]["name"] not in config_maps:
                problem(w, f"{c['name']} env {e['name']} reads a ConfigMap that is not rendered")
            defined.add(e["name"])
            if "value" in e:
                env_config[e["name"]] = e["value"]
        for arg in c.get("command", []) + c.get("args", []):
            for var in VAR_REF.findall(arg):
                if var not in defined:
                    problem(w, f"{c['name']} argument uses $({var}), which the container does not define")
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(probe_name)
            if not probe:
                continue
            action = probe.get("grpc") or probe.get("httpGet") or probe.get("tcpSocket")
            port = action.get("port") if action else None
            if port is not None and port not in ports and port not in names:
                problem(w, f"{c['name']} {probe_name} probes port {port}, which the container does not expose")
        pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        drain_ms = env_config.get("OPENCLAW_DRAIN_TIMEOUT_MS")
        if drain_ms is not None:
            needed = pause + int(drain_ms) / 1000 + EXIT_MARGIN_SECONDS
            if grace < needed:
                problem(w, f"terminationGracePeriodSeconds {grace} < preStop {pause} s + drain {int(drain_ms) / 1000:g} s + {EXIT_MARGIN_SECONDS} s")
    scrape_port = annotations.get("prometheus.io/port")
    if scrape_port is not None and int(scrape_port) not in container_ports:
        problem(w, f"prometheus.io/port {scrape_port} is not a container port")

for p in problems:
    print(f"ERROR {p}")
sys.exit(1 if problems else 0)
