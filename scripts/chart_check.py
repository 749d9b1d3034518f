#!/usr/bin/env python3
"""Lint, render and validate the Helm chart charts/sluice, offline: no helm binary, no cluster.

Run through scripts/chart-check.sh, which provides the Python packages:
  helm-python-sdk (the Helm v4 Go SDK via ctypes, import name ``helm_python``): lint and render;
  kubernetes-validate (bundled OpenAPI schemas): strict validation of every rendered object
  and every CRD in charts/sluice/crds/.

For the chart's defaults and for each charts/sluice/ci/*-values.yaml it runs `helm lint
--strict`, renders (which also enforces values.schema.json), validates each object against
Kubernetes KUBE_VERSION with unknown fields as errors, and checks the chart's contract: the
RBAC rules sluice needs and no more, the drain/grace arithmetic, the security context, the
downward-API env, the Redis / trusted-proxy / rate-limit / retry-buffer env (and that no Redis
is bundled), probes, and that selectors, ports and bindings point at what exists. It then
checks the exact env a few rate-limit value sets render, that values the chart must refuse are
refused, that every `.Values.x` a template reads is declared in values.yaml, and that the
chart's CRDs are byte-identical to crds/.

Usage: chart_check.py [--kube-version 1.33.0] [--chart DIR]. Exits 1 if anything failed, 2 on bad usage.
"""
from __future__ import annotations

import argparse
import filecmp
import glob
import os
import re
import sys
from typing import Any, Iterable

import helm_python as helm
import kubernetes_validate
import kubernetes_validate.utils as kv_utils  # VersionNotSupportedError is not re-exported
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(REPO, "charts", "sluice")  # --chart overrides it
RELEASE, NAMESPACE = "sluice", "sluice-system"

# Kinds without a bundled schema, allowed to skip validation. Keyed by (apiVersion, kind), so
# a misspelt apiVersion of a built-in kind still fails.
SKIP_NO_SCHEMA = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"):
        "prometheus-operator CRD: kubernetes-validate bundles no schema for it",
}

# The API access sluice needs in the namespaces it watches, as (apiGroup, resource, verb).
# The contract, restated on purpose rather than read back from the chart.
EXPECTED_WATCH_RULES = {
    *(("sluice.dev", r, v) for r in ("gatewayroutes", "ratelimitpolicies")
      for v in ("list", "watch")),
    ("sluice.dev", "gatewayroutes/status", "patch"),
    ("sluice.dev", "ratelimitpolicies/status", "patch"),
    ("", "services", "list"), ("", "services", "watch"),
    ("discovery.k8s.io", "endpointslices", "list"), ("discovery.k8s.io", "endpointslices", "watch"),
    ("events.k8s.io", "events", "create"), ("events.k8s.io", "events", "patch"),
    ("", "secrets", "list"), ("", "secrets", "watch"),
}
EXPECTED_LEASE_RULES = {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                   "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart")
NONROOT_UID = 65532

# Values the chart must refuse to render, and a fragment of the error each must produce.
MUST_REFUSE = [
    ("grace not above preStop + drain", {"terminationGracePeriodSeconds": 30},
     "terminationGracePeriodSeconds (30) must be greater"),
    ("misspelt top-level key", {"replicas": 3}, "replicas"),
    ("privileged container port", {"containerPorts": {"http": 80}}, "containerPorts/http"),
    ("externalTrafficPolicy on ClusterIP",
     {"service": {"type": "ClusterIP", "externalTrafficPolicy": "Local"}}, "externalTrafficPolicy"),
    ("HPA max below min",
     {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 2}}, "maxReplicas"),
    ("bad namespace name", {"watchNamespaces": ["Bad_NS"]}, "watchNamespaces/0"),
    ("password in redis.url", {"redis": {"url": "redis://:hunter2@redis.cache:6379/0"}},
     "redis.url must not carry a password"),
    ("user:password in redis.url", {"redis": {"url": "redis://sluice:hunter2@redis.cache:6379"}},
     "redis.url must not carry a password"),
    ("redis.url without a scheme", {"redis": {"url": "redis.cache:6379"}}, "redis/url"),
    ("redis.timeout without a unit", {"redis": {"timeout": "50"}}, "redis/timeout"),
    ("redis.passwordSecret without redis.url",
     {"redis": {"passwordSecret": {"name": "redis-auth"}}},
     "redis.passwordSecret is set but redis.url is empty"),
    ("trustedProxies given as one comma-joined entry",
     {"trustedProxies": ["10.0.0.0/8,192.168.0.0/16"]}, "trustedProxies/0"),
    ("trustedProxies entry not a CIDR", {"trustedProxies": ["lb.example.com"]}, "trustedProxies/0"),
    ("limitKeys 0", {"limitKeys": 0}, "limitKeys"),
    ("retryBuffer with a space and a non-Kubernetes unit", {"retryBuffer": "64 KB"}, "retryBuffer"),
    ("retryBuffer as a decimal", {"retryBuffer": "1.5Mi"}, "retryBuffer"),
    ("cacheSize with a space", {"cacheSize": "64 MB"}, "cacheSize"),
    ("otlpEndpoint without a scheme", {"otlpEndpoint": "otel-collector:4318"}, "otlpEndpoint"),
    ("accessLogSample above 1", {"accessLogSample": 5}, "accessLogSample"),
    ("containerPorts.https equal to http", {"containerPorts": {"https": 8080}},
     "containerPorts.https must differ"),
    ("containerPorts.https equal to admin", {"containerPorts": {"https": 9901}},
     "containerPorts.https must differ"),
    ("service.httpsPort equal to service.port", {"service": {"httpsPort": 80}},
     "service.port and service.httpsPort must differ"),
    ("httpsNodePort on ClusterIP", {"service": {"type": "ClusterIP", "httpsNodePort": 30443}},
     "service.httpsNodePort applies only"),
    ("httpsNodePort equal to nodePort",
     {"service": {"type": "NodePort", "nodePort": 30080, "httpsNodePort": 30080}},
     "service.nodePort and service.httpsNodePort must differ"),
]

# The env the Redis, trusted-proxy, key-limit and retry-buffer values render, restated: (label,
# overrides, the container's env entries with these names, in order, exactly). Defaults render
# none.
RATE_LIMIT_ENV_NAMES = ("SLUICE_REDIS", "SLUICE_REDIS_TIMEOUT", "SLUICE_REDIS_PASSWORD",
                        "SLUICE_TRUSTED_PROXIES", "SLUICE_LIMIT_KEYS", "SLUICE_RETRY_BUFFER")
RATE_LIMIT_ENV_CASES = [
    ("defaults", None, []),
    ("redis.url + passwordSecret (default key) + trustedProxies + limitKeys + retryBuffer",
     {"redis": {"url": "redis://redis-master.cache:6379/0",
                "passwordSecret": {"name": "redis-auth"}},
      "trustedProxies": ["10.0.0.0/8", "192.168.0.0/16"], "limitKeys": 2000000,
      "retryBuffer": "1Mi", "secretNames": ["corp-keys"]},
     [{"name": "SLUICE_REDIS", "value": "redis://redis-master.cache:6379/0"},
      {"name": "SLUICE_REDIS_PASSWORD",
       "valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "password"}}},
      {"name": "SLUICE_TRUSTED_PROXIES", "value": "10.0.0.0/8,192.168.0.0/16"},
      {"name": "SLUICE_LIMIT_KEYS", "value": "2000000"},
      {"name": "SLUICE_RETRY_BUFFER", "value": "1Mi"}]),
    ("redis.url with an ACL user and an IPv6 host + timeout + passwordSecret key",
     {"redis": {"url": "redis://sluice@[fd00::1]:6379/0", "timeout": "1s500ms",
                "passwordSecret": {"name": "redis-auth", "key": "redis-password"}},
      "trustedProxies": ["fd00::/8"]},
     [{"name": "SLUICE_REDIS", "value": "redis://sluice@[fd00::1]:6379/0"},
      {"name": "SLUICE_REDIS_TIMEOUT", "value": "1s500ms"},
      {"name": "SLUICE_REDIS_PASSWORD",
       "valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "redis-password"}}},
      {"name": "SLUICE_TRUSTED_PROXIES", "value": "fd00::/8"}]),
]
# Workload kinds the chart never renders: sluice is its one Deployment, and Redis is the user's.
NOT_RENDERED_WORKLOADS = ("StatefulSet", "DaemonSet", "ReplicaSet", "Pod", "Job", "CronJob")


class Result:
    def __init__(self) -> None:
        self.passed = self.failed = self.skipped = 0

    def ok(self, msg: str) -> None:
        self.passed += 1
        print(f"  PASS {msg}")

    def fail(self, msg: str) -> None:
        self.failed += 1
        print(f"  FAIL {msg}")

    def skip(self, msg: str) -> None:
        self.skipped += 1
        print(f"  SKIP {msg}")

    def check(self, cond: bool, msg: str, why: str = "") -> None:
        if cond:
            self.ok(msg)
        else:
            self.fail(f"{msg}{': ' + why if why else ''}")


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing, as far as the checks need it: maps merge, null deletes."""
    out = dict(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merged(out[k], v)
        else:
            out[k] = v
    return out


def render(values: dict[str, Any] | None) -> tuple[list[tuple[str, Any]], list[tuple[str, str]]]:
    """Rendered objects as (where, object), and the chart's CRD files as (name, text)."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        crds = [(c["filename"], c["data"]) for c in chart.crds]
    objs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for i, doc in enumerate(yaml.safe_load_all(text)):
            if doc is not None:
                objs.append((f"{path}#{i}", doc))
    return objs, crds


def validate(where: str, doc: Any, kube_version: str, res: Result) -> None:
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        res.fail(f"{where}: not a Kubernetes object (no apiVersion/kind)")
        return
    ident = f"{where} {doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"
    try:
        kubernetes_validate.validate(doc, kube_version, strict=True)  # unknown fields fail
        res.ok(ident)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.absolute_path) or "<root>"
        res.fail(f"{ident}: {path}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError as e:
        reason = SKIP_NO_SCHEMA.get((doc["apiVersion"], doc["kind"]))
        if reason:
            res.skip(f"{ident}: {reason}")
        else:
            res.fail(f"{ident}: {e.message}")


def triples(rules: Iterable[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule.get("apiGroups", [])
            for r in rule.get("resources", []) for v in rule.get("verbs", [])}


def subset(small: dict[str, str] | None, big: dict[str, str] | None) -> bool:
    return bool(small) and all((big or {}).get(k) == v for k, v in small.items())


def check_contract(objs: list[Any], values: dict[str, Any], res: Result) -> None:
    """The chart's invariants, on the rendered objects of one values set."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    kinds = lambda k: by_kind.get(k, [])  # noqa: E731

    unlabelled = [f"{o['kind']}/{o['metadata']['name']}" for o in objs
                  if any(k not in o["metadata"].get("labels", {}) for k in STANDARD_LABELS)]
    res.check(not unlabelled, "every object has the app.kubernetes.io/* and helm.sh/chart labels",
              f"missing on {unlabelled}")

    deps = kinds("Deployment")
    if len(deps) != 1:
        res.fail(f"expected one Deployment, got {len(deps)}")
        return
    dep = deps[0]
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c.get("env", [])}
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}

    drain = re.fullmatch(r"(\d+)s", env.get("SLUICE_DRAIN_TIMEOUT", {}).get("value", ""))
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    res.check(drain is not None and grace > pre_stop + int(drain.group(1)),
              f"terminationGracePeriodSeconds {grace} > preStop {pre_stop} + drain "
              f"{drain.group(1) if drain else '?'}s")

    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    problems = [name for name, good in [
        ("pod runAsNonRoot", psc.get("runAsNonRoot") is True),
        ("pod runAsUser", psc.get("runAsUser") == NONROOT_UID),
        ("container runAsNonRoot", csc.get("runAsNonRoot") is True),
        ("container runAsUser", csc.get("runAsUser", psc.get("runAsUser")) == NONROOT_UID),
        ("readOnlyRootFilesystem", csc.get("readOnlyRootFilesystem") is True),
        ("allowPrivilegeEscalation false", csc.get("allowPrivilegeEscalation") is False),
        ("capabilities drop ALL", csc.get("capabilities", {}).get("drop") == ["ALL"]),
        ("no added capabilities", not csc.get("capabilities", {}).get("add")),
        ("seccompProfile RuntimeDefault", seccomp == "RuntimeDefault"),
    ] if not good]
    res.check(not problems, "security context: non-root 65532, read-only, no privileges",
              f"wrong: {problems}")

    field = lambda n: env.get(n, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")  # noqa: E731
    watch = list(dict.fromkeys(values.get("watchNamespaces") or []))
    env_problems = [name for name, good in [
        ("POD_NAME from metadata.name", field("POD_NAME") == "metadata.name"),
        ("POD_NAMESPACE from metadata.namespace", field("POD_NAMESPACE") == "metadata.namespace"),
        ("SLUICE_LISTEN on the http port",
         env.get("SLUICE_LISTEN", {}).get("value") == f"0.0.0.0:{ports.get('http')}"),
        ("SLUICE_ADMIN_LISTEN on the admin port",
         env.get("SLUICE_ADMIN_LISTEN", {}).get("value") == f"0.0.0.0:{ports.get('admin')}"),
        ("SLUICE_NAMESPACE = watchNamespaces",
         env.get("SLUICE_NAMESPACE", {}).get("value") == ",".join(watch) if watch
         else "SLUICE_NAMESPACE" not in env),
        ("SLUICE_LOG_FORMAT json|plain", env.get("SLUICE_LOG_FORMAT", {}).get("value") in ("json", "plain")),
    ] if not good]
    res.check(not env_problems, "env: listeners, drain, namespaces, downward-API pod identity",
              f"wrong: {env_problems}")

    redis = values.get("redis") or {}
    secret = redis.get("passwordSecret") or {}
    limit = values.get("limitKeys")
    plain = lambda n, v: env.get(n) == {"name": n, "value": v} if v else n not in env  # noqa: E731
    sample = env.get("SLUICE_ACCESS_LOG_SAMPLE") or {}
    rl_problems = [name for name, good in [
        ("SLUICE_REDIS = redis.url", plain("SLUICE_REDIS", redis.get("url"))),
        ("SLUICE_REDIS_TIMEOUT = redis.timeout",
         plain("SLUICE_REDIS_TIMEOUT", redis.get("timeout"))),
        ("SLUICE_REDIS_PASSWORD from the redis.passwordSecret key",
         env.get("SLUICE_REDIS_PASSWORD") == {
             "name": "SLUICE_REDIS_PASSWORD",
             "valueFrom": {"secretKeyRef": {"name": secret["name"], "key": secret.get("key")}}}
         if secret.get("name") else "SLUICE_REDIS_PASSWORD" not in env),
        ("SLUICE_TRUSTED_PROXIES = trustedProxies joined by commas",
         plain("SLUICE_TRUSTED_PROXIES", ",".join(values.get("trustedProxies") or []))),
        ("SLUICE_LIMIT_KEYS = limitKeys, as an integer",
         plain("SLUICE_LIMIT_KEYS", None if limit is None else str(int(limit)))),
        ("SLUICE_RETRY_BUFFER = retryBuffer",
         plain("SLUICE_RETRY_BUFFER", values.get("retryBuffer"))),
        ("SLUICE_CACHE_SIZE = cacheSize", plain("SLUICE_CACHE_SIZE", values.get("cacheSize"))),
        ("SLUICE_OTLP_ENDPOINT = otlpEndpoint",
         plain("SLUICE_OTLP_ENDPOINT", values.get("otlpEndpoint"))),
        # Compared as numbers: Helm prints 1.0 as "1" and 0.00001 as "1e-05" (both parse in sluice).
        ("SLUICE_ACCESS_LOG_SAMPLE = accessLogSample",
         "SLUICE_ACCESS_LOG_SAMPLE" not in env if values.get("accessLogSample") is None
         else set(sample) == {"name", "value"} and
         float(sample["value"]) == float(values["accessLogSample"])),
        ("SLUICE_LISTEN_TLS on the https port",
         env.get("SLUICE_LISTEN_TLS", {}).get("value") == f"0.0.0.0:{ports.get('https')}"),
        ("SLUICE_HTTPS_REDIRECT_PORT = service.httpsPort when not 443",
         plain("SLUICE_HTTPS_REDIRECT_PORT",
               None if values["service"]["httpsPort"] == 443 else str(values["service"]["httpsPort"]))),
    ] if not good]
    res.check(not rl_problems,
              "env: Redis, trusted proxies, limit keys, retry buffer, cache, OTLP, access-log "
              "sample, TLS listener and redirect port as the values say",
              f"wrong: {rl_problems}")
    extra = [f"{k}/{o['metadata']['name']}" for k in NOT_RENDERED_WORKLOADS for o in kinds(k)]
    extra += [f"{o['kind']}/{o['metadata']['name']}" for o in objs
              if "redis" in o["metadata"]["name"].lower()]
    res.check(not extra and len(pod["containers"]) == 1 and not pod.get("initContainers"),
              "no bundled Redis: no other workload, container or redis-named object",
              f"found {list(dict.fromkeys(extra))}")

    probe_ok = lambda p, path: (p or {}).get("httpGet", {}).get("path") == path and \
        (p or {}).get("httpGet", {}).get("port") in ("admin", ports.get("admin"))  # noqa: E731
    res.check(probe_ok(c.get("livenessProbe"), "/healthz") and
              probe_ok(c.get("readinessProbe"), "/readyz"),
              "probes: liveness /healthz, readiness /readyz, on the admin port")
    tag = values["image"]["tag"] or yaml.safe_load(open(os.path.join(CHART, "Chart.yaml")))["appVersion"]
    res.check(c["image"] == f"{values['image']['repository']}:{tag}", f"image {c['image']}")

    hpas = kinds("HorizontalPodAutoscaler")
    if values["autoscaling"]["enabled"]:
        res.check(len(hpas) == 1 and "replicas" not in dep["spec"] and
                  hpas[0]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"],
                  "HPA targets the Deployment, which leaves replicas to it")
    else:
        res.check(not hpas and dep["spec"].get("replicas") == values["replicaCount"],
                  "no HPA; Deployment replicas = replicaCount")

    # Services: the gateway Service exposes the proxy only; the admin one only the admin port.
    svcs = {s["metadata"]["labels"].get("app.kubernetes.io/component"): s for s in kinds("Service")}
    gw = svcs.get("gateway")
    res.check(gw is not None and gw["spec"]["type"] == values["service"]["type"] and
              subset(gw["spec"]["selector"], pod_labels) and
              [p["targetPort"] for p in gw["spec"]["ports"]] == ["http", "https"] and
              [p["port"] for p in gw["spec"]["ports"]] ==
              [values["service"]["port"], values["service"]["httpsPort"]],
              "gateway Service selects the pods and exposes only the proxy's HTTP and HTTPS ports")
    admin = svcs.get("admin")
    want_admin = values["adminService"]["enabled"] or values["serviceMonitor"]["enabled"]
    res.check((admin is not None) == bool(want_admin) and
              (admin is None or (admin["spec"]["type"] == "ClusterIP" and
                                 subset(admin["spec"]["selector"], pod_labels))),
              f"admin Service {'present, ClusterIP' if want_admin else 'absent'}")
    for sm in kinds("ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        res.check(admin is not None and subset(sel, admin["metadata"]["labels"]) and
                  not subset(sel, gw["metadata"]["labels"] if gw else {}) and
                  sm["spec"]["endpoints"][0]["port"] in [p["name"] for p in admin["spec"]["ports"]],
                  "ServiceMonitor selects the admin Service (only) and one of its ports")
    for pdb in kinds("PodDisruptionBudget"):
        res.check(pdb["apiVersion"] == "policy/v1" and
                  subset(pdb["spec"]["selector"]["matchLabels"], pod_labels),
                  "PodDisruptionBudget selects the pods")
    res.check(bool(kinds("PodDisruptionBudget")) == values["podDisruptionBudget"]["enabled"],
              "PodDisruptionBudget rendered iff enabled")

    sa = pod.get("serviceAccountName")
    if not values["serviceAccount"]["create"]:
        res.check(not kinds("ServiceAccount") and
                  sa == (values["serviceAccount"].get("name") or "default"),
                  f"serviceAccount.create=false: the pods use the existing {sa}")
    check_rbac(kinds, values, watch, sa, res)


def check_rbac(kinds, values: dict[str, Any], watch: list[str], sa: str | None,
               res: Result) -> None:
    if not values["rbac"]["create"]:
        res.check(not kinds("Role") and not kinds("ClusterRole"), "rbac.create=false: no RBAC")
        return
    if values["serviceAccount"]["create"]:
        res.check([s["metadata"]["name"] for s in kinds("ServiceAccount")] == [sa],
                  f"the pods run as the chart's ServiceAccount {sa}")
    all_rules = [r for k in ("Role", "ClusterRole") for o in kinds(k) for r in o.get("rules", [])]
    flat = triples(all_rules)
    res.check(not any("*" in (g, r, v) for g, r, v in flat), "no rule uses a wildcard")
    secret_rules = [r for r in all_rules if "secrets" in r.get("resources", [])]
    res.check(all(set(r.get("verbs", [])) == {"list", "watch"} and r.get("resources") == ["secrets"]
                  for r in secret_rules),
              "Secrets: list and watch only (read by name), never get-all, create or update")
    names = values.get("secretNames") or []
    res.check(all(sorted(r.get("resourceNames") or []) == sorted(names) for r in secret_rules),
              f"Secrets restricted to secretNames {names}" if names
              else "Secrets: no resourceNames when secretNames is empty")

    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for k in ("Role", "ClusterRole") for o in kinds(k)}
    bound = set()
    for b in kinds("RoleBinding") + kinds("ClusterRoleBinding"):
        ns = b["metadata"].get("namespace") if b["roleRef"]["kind"] == "Role" else None
        key = (b["roleRef"]["kind"], ns, b["roleRef"]["name"])
        subj = b.get("subjects", [])
        res.check(key in roles and subj == [{"kind": "ServiceAccount", "name": sa,
                                             "namespace": NAMESPACE}],
                  f"{b['kind']} {ns or ''}/{b['metadata']['name']} binds {key[2]} to "
                  f"ServiceAccount {NAMESPACE}/{sa}")
        bound.add(key)
    res.check(set(roles) <= bound, "every Role and ClusterRole is bound",
              f"unbound: {sorted(set(roles) - bound)}")

    crs = kinds("ClusterRole")
    watch_roles = {o["metadata"]["namespace"]: triples(o["rules"]) for o in kinds("Role")
                   if triples(o["rules"]) != EXPECTED_LEASE_RULES}
    if not watch:
        res.check(len(crs) == 1 and triples(crs[0]["rules"]) == EXPECTED_WATCH_RULES,
                  "ClusterRole grants exactly the watch/status/event access",
                  f"extra {sorted(triples(crs[0]['rules']) - EXPECTED_WATCH_RULES)}, missing "
                  f"{sorted(EXPECTED_WATCH_RULES - triples(crs[0]['rules']))}" if crs else "none")
        res.check(not watch_roles, "no per-namespace Roles without watchNamespaces")
    else:
        res.check(not crs and not kinds("ClusterRoleBinding"),
                  "watchNamespaces: no ClusterRole or ClusterRoleBinding")
        res.check(sorted(watch_roles) == sorted(watch) and
                  all(t == EXPECTED_WATCH_RULES for t in watch_roles.values()),
                  f"a Role with exactly the watch/status/event access in each of {watch}",
                  "; ".join(f"{ns}: extra {sorted(t - EXPECTED_WATCH_RULES)}, missing "
                            f"{sorted(EXPECTED_WATCH_RULES - t)}" for ns, t in watch_roles.items()
                            if t != EXPECTED_WATCH_RULES) or f"Roles in {sorted(watch_roles)}")
    lease = [o for o in kinds("Role") if o["metadata"]["namespace"] == NAMESPACE
             and triples(o["rules"]) == EXPECTED_LEASE_RULES]
    res.check(len(lease) == 1, f"Role for the Lease in {NAMESPACE}: leases get/create/update only")


def check_values_set(label: str, overrides: dict[str, Any] | None, defaults: dict[str, Any],
                     kube_version: str, res: Result) -> None:
    print(f"== values: {label} ==")
    report = helm.lint(CHART, overrides, strict=True, namespace=NAMESPACE,
                       kube_version=f"v{kube_version}")
    for m in report["messages"]:
        if m["severity"] >= 2:
            print(f"  lint[{m['severity']}] {m['path']}: {m['error'].strip()}")
    res.check(not report["errors"], "helm lint --strict", f"{len(report['errors'])} error(s)")
    try:
        objs, _ = render(overrides)
    except helm.HelmError as e:  # HelmValuesError (schema) or HelmRenderError (template)
        res.fail(f"render: {type(e).__name__}: {e}")
        return
    seen: set[tuple[str, str, str, str]] = set()
    for where, doc in objs:
        validate(where, doc, kube_version, res)
        if isinstance(doc, dict):
            meta = doc.get("metadata", {})
            key = (doc.get("apiVersion"), doc.get("kind"), meta.get("namespace"), meta.get("name"))
            if key in seen:
                res.fail(f"{where}: duplicate object {key}")
            seen.add(key)
    docs = [d for _, d in objs if isinstance(d, dict) and "kind" in d]
    check_contract(docs, merged(defaults, overrides or {}), res)


def check_rate_limit_env(defaults: dict[str, Any], kube_version: str, res: Result) -> None:
    """The exact env each RATE_LIMIT_ENV_CASES set renders, after its full values-set check."""
    for label, overrides, want in RATE_LIMIT_ENV_CASES:
        if overrides is not None:  # the defaults had their full check already
            check_values_set(f"rate limits: {label}", overrides, defaults, kube_version, res)
        else:
            print(f"== values: rate limits: {label} ==")
        try:
            objs, _ = render(overrides)
        except helm.HelmError as e:
            res.fail(f"{label}: render: {type(e).__name__}: {e}")
            continue
        docs = [d for _, d in objs if isinstance(d, dict) and "kind" in d]
        deps = [d for d in docs if d["kind"] == "Deployment"]
        if len(deps) != 1:
            res.fail(f"{label}: expected one Deployment, got {len(deps)}")
            continue
        env = [e for c in deps[0]["spec"]["template"]["spec"]["containers"]
               for e in c.get("env", []) if e["name"] in RATE_LIMIT_ENV_NAMES]
        res.check(env == want, f"{label}: env exactly {', '.join(e['name'] for e in want)}" if want
                  else f"{label}: none of {', '.join(RATE_LIMIT_ENV_NAMES)}", f"got {env}")
        res.check(not [d for d in docs if d["kind"] in NOT_RENDERED_WORKLOADS or
                       "redis" in d["metadata"]["name"].lower()],
                  f"{label}: no Redis StatefulSet, Deployment, Service or other object rendered")
        secret_names = sorted({n for d in docs if d["kind"] in ("Role", "ClusterRole")
                               for r in d.get("rules", []) if "secrets" in r.get("resources", [])
                               for n in r.get("resourceNames") or []})
        res.check(secret_names == sorted((overrides or {}).get("secretNames") or []),
                  f"{label}: the Redis password Secret gets no RBAC (kubelet reads it)",
                  f"Secret resourceNames {secret_names}")


def check_refusals(res: Result) -> None:
    print("== values the chart must refuse ==")
    for label, overrides, fragment in MUST_REFUSE:
        try:
            render(overrides)
            res.fail(f"{label}: rendered, expected an error mentioning {fragment!r}")
        except helm.HelmError as e:
            first = str(e).strip().splitlines()
            res.check(fragment in str(e), f"{label}: refused",
                      f"error does not mention {fragment!r}: {first}")


def check_values_declared(defaults: dict[str, Any], res: Result) -> None:
    """A `.Values.x.y` no values.yaml declares renders as empty without a word: catch it here."""
    print("== templates read only declared values ==")
    undeclared = []
    for path in sorted(glob.glob(os.path.join(CHART, "templates", "*"))):
        text = open(path, encoding="utf-8").read()
        for m in re.finditer(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text):
            node: Any = defaults
            for part in m.group(1).lstrip(".").split("."):
                if not isinstance(node, dict) or part not in node:
                    line = text.count("\n", 0, m.start()) + 1
                    undeclared.append(f"{os.path.basename(path)}:{line}: .Values{m.group(1)}")
                    break
                node = node[part]
    res.check(not undeclared, "every .Values reference is declared in values.yaml",
              "; ".join(undeclared))


def check_crds(kube_version: str, res: Result) -> None:
    print("== CRDs ==")
    _, crds = render(None)
    names = []
    for filename, text in crds:
        name = os.path.basename(filename)
        names.append(name)
        source, copy = os.path.join(REPO, "crds", name), os.path.join(CHART, "crds", name)
        same = os.path.isfile(source) and filecmp.cmp(source, copy, shallow=False)
        res.check(same, f"charts/sluice/crds/{name} is identical to crds/{name}",
                  "copy it again: cp crds/*.yaml charts/sluice/crds/")
        for i, doc in enumerate(yaml.safe_load_all(text)):
            if doc is not None:
                validate(f"crds/{name}#{i}", doc, kube_version, res)
    expected = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "crds", "*.yaml")))
    res.check(sorted(names) == expected, "the chart ships every CRD in crds/",
              f"chart {sorted(names)} vs crds/ {expected}")


def main() -> int:
    global CHART
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kube-version", default="1.33.0",
                    help="Kubernetes version to validate against (default 1.33.0)")
    ap.add_argument("--chart", default=CHART, help="chart directory (default charts/sluice)")
    args = ap.parse_args()
    CHART = os.path.abspath(args.chart)
    if not os.path.isfile(os.path.join(CHART, "Chart.yaml")):
        print(f"{CHART}: no Chart.yaml", file=sys.stderr)
        return 2
    try:  # fail fast on a version kubernetes-validate does not bundle
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": "x"}}, args.kube_version, True)
    except (kv_utils.VersionNotSupportedError, IndexError):
        print(f"Kubernetes {args.kube_version} is not bundled by kubernetes-validate "
              f"(latest {kubernetes_validate.latest_version()})", file=sys.stderr)
        return 2
    print(f"helm SDK {helm.helm_sdk_version()}, kubernetes-validate "
          f"{kubernetes_validate.__version__}, validating against Kubernetes {args.kube_version}")

    res = Result()
    try:
        with open(os.path.join(CHART, "values.yaml"), encoding="utf-8") as f:
            defaults = helm.values_from_yaml(f.read())
        sets: list[tuple[str, dict[str, Any] | None]] = [("defaults", None)]
        for path in sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml"))):
            with open(path, encoding="utf-8") as f:  # Helm's parser: means what `-f FILE` means
                sets.append((os.path.relpath(path, CHART), helm.values_from_yaml(f.read())))
        for label, overrides in sets:
            check_values_set(label, overrides, defaults, args.kube_version, res)
        check_rate_limit_env(defaults, args.kube_version, res)
        check_refusals(res)
        check_values_declared(defaults, res)
        check_crds(args.kube_version, res)
    except helm.HelmError as e:  # e.g. HelmChartLoadError for a broken Chart.yaml
        res.fail(f"{type(e).__name__}: {e}")
    print(f"chart_check: {res.passed} passed, {res.failed} failed, {res.skipped} skipped")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
