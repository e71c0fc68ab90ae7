#!/usr/bin/env python3
"""Checks on the deployment files that no off-the-shelf tool covers (run by scripts/validate-deploy.sh).

Subcommands (each exits 0 on success, 1 on a finding, and prints what it checked):
  names          every metric name in the Grafana dashboard, the alert rules and the prometheus-adapter
                 rules is exported by a running server (a /metrics scrape) or listed as planned in
                 deploy/pending-metrics.txt; the HPA's custom metrics are ones the adapter serves
  dashboard-rules  write every dashboard expression (Grafana variables substituted) as recording rules,
                 so that `promtool check rules` syntax-checks them
  crds           offline checks for the custom resources (ServiceMonitor, KServe ServingRuntime and
                 InferenceService): YAML, required fields, cross-references, embedded core objects
                 validated with kubernetes-validate
  compose        structure of the compose files and that every bind-mounted host path exists
  consistency    ConfigMap model configs equal models/*/config.toml; Grafana provider path matches the
                 compose mount; Prometheus scrapes the metrics port

Needs PyYAML (and kubernetes-validate for `crds`); no network.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# Series that Prometheus itself writes for every target or rule; never exported by the server.
PROMETHEUS_BUILTIN = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
    "ALERTS",
    "ALERTS_FOR_STATE",
}

PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "atan2", "inf", "nan", "Inf", "NaN",
}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def fail(msg: str) -> None:
    print(f"  FAIL {msg}")


def load_yaml_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---------------------------------------------------------------------------------------------
# PromQL metric-name extraction
# ---------------------------------------------------------------------------------------------

GRAFANA_TIME_VARS = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}


def substitute_templates(expr: str) -> str:
    """Grafana variables and prometheus-adapter templates -> plain PromQL."""

    def grafana(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return "5m" if name in GRAFANA_TIME_VARS else "x"

    expr = re.sub(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]", grafana, expr)
    expr = expr.replace("<<.LabelMatchers>>", 'pod="x"').replace("<<.GroupBy>>", "pod")
    return expr


def metric_names(expr: str) -> tuple[set[str], list[str]]:
    """Metric names selected by a PromQL expression, plus problems (names that cannot be checked)."""
    problems: list[str] = []
    names: set[str] = set()
    for m in re.finditer(r'__name__\s*(=~|!~|!=|=)\s*"([^"]*)"', expr):
        if m.group(1) == "=":
            names.add(m.group(2))
        else:
            problems.append(f"__name__ {m.group(1)} \"{m.group(2)}\" cannot be checked; name the metric")
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # string literals
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\[\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names, problems


def exported_names(scrape: str) -> tuple[set[str], dict[str, str]]:
    """Names a /metrics scrape offers to PromQL (histograms as _bucket/_sum/_count), and their types."""
    types: dict[str, str] = {}
    samples: set[str] = set()
    for line in scrape.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            types[name] = kind.strip()
        elif line and not line.startswith("#"):
            samples.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    names = set(samples)
    for name, kind in types.items():
        if kind == "histogram":
            names.update(name + s for s in HISTOGRAM_SUFFIXES)
        elif kind == "summary":
            names.update({name, name + "_sum", name + "_count"})
        else:
            names.add(name)
    return names, types


def read_pending(path: Path) -> set[str]:
    out = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.add(line)
    return out


def dashboard_exprs(path: Path) -> list[tuple[str, str]]:
    """(where, PromQL) for every query in a Grafana dashboard, including template variables."""
    dash = json.loads(path.read_text())
    found: list[tuple[str, str]] = []

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            title = node.get("title") or node.get("name") or where
            if isinstance(node.get("expr"), str) and node["expr"].strip():
                found.append((f"{title} [{node.get('refId', '?')}]", node["expr"]))
            for k, v in node.items():
                if k != "templating":
                    walk(v, title)
        elif isinstance(node, list):
            for v in node:
                walk(v, where)

    walk(dash, path.name)
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        q = var.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", q)
        if m:
            found.append((f"variable ${var['name']}", m.group(1)))
        elif re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", q):
            continue
        else:
            m = re.fullmatch(r"\s*query_result\((.*)\)\s*", q)
            found.append((f"variable ${var['name']}", m.group(1) if m else q))
    return found


def rule_exprs(path: Path) -> list[tuple[str, str]]:
    doc = yaml.safe_load(path.read_text())
    groups = doc.get("groups") or doc.get("spec", {}).get("groups", [])
    return [
        (r.get("alert") or r.get("record"), r["expr"])
        for g in groups
        for r in g.get("rules", [])
    ]


def adapter_rules(path: Path) -> list[dict]:
    doc = yaml.safe_load(path.read_text())
    rules = doc.get("rules", doc)
    out = []
    for key in ("custom", "external", "resource"):
        part = rules.get(key) if isinstance(rules, dict) else None
        if isinstance(part, list):
            out.extend(part)
    return out


def adapter_exprs_and_metrics(path: Path) -> tuple[list[tuple[str, str]], set[str]]:
    exprs, served = [], set()
    for i, rule in enumerate(adapter_rules(path)):
        series = rule["seriesQuery"]
        exprs.append((f"rule {i} seriesQuery", series))
        series_names, _ = metric_names(substitute_templates(series))
        mq = rule.get("metricsQuery", "")
        if "<<.Series>>" in mq:
            mq = mq.replace("<<.Series>>", next(iter(series_names)) if len(series_names) == 1 else "x")
        exprs.append((f"rule {i} metricsQuery", mq))
        name = rule.get("name", {})
        for s in series_names:
            if "as" in name and name["as"]:
                served.add(re.sub(name.get("matches", "^(.*)$"), name["as"].replace("${1}", r"\1"), s))
            else:
                served.add(s)
    return exprs, served


def hpa_custom_metrics(paths: list[Path]) -> list[tuple[str, str]]:
    out = []
    for p in paths:
        for doc in load_yaml_docs(p):
            if doc.get("kind") != "HorizontalPodAutoscaler":
                continue
            for m in doc["spec"].get("metrics", []):
                kind = m["type"]
                if kind in ("Pods", "Object", "External"):
                    spec = m[kind[0].lower() + kind[1:]]
                    out.append((f"{p.name} {doc['metadata']['name']} {kind}", spec["metric"]["name"]))
    return out


def cmd_names(a: argparse.Namespace) -> int:
    scrape = Path(a.metrics).read_text()
    exported, types = exported_names(scrape)
    pending = read_pending(Path(a.pending))
    print(f"  server exports {len(types)} metric families ({len(exported)} selectable names); "
          f"{len(pending)} planned names in {a.pending}")
    if not exported:
        fail("the scrape holds no metrics")
        return 1
    sources: list[tuple[str, list[tuple[str, str]]]] = []
    for d in a.dashboard:
        sources.append((d, dashboard_exprs(Path(d))))
    for r in a.rules:
        sources.append((r, rule_exprs(Path(r))))
    served: set[str] = set()
    for ad in a.adapter:
        exprs, s = adapter_exprs_and_metrics(Path(ad))
        served |= s
        sources.append((ad, exprs))
    bad = 0
    used_pending: set[str] = set()
    for src, exprs in sources:
        if not exprs:
            fail(f"{src}: no PromQL expressions found")
            bad += 1
            continue
        names_here: set[str] = set()
        for where, expr in exprs:
            names, problems = metric_names(substitute_templates(expr))
            for p in problems:
                fail(f"{src}: {where}: {p}")
                bad += 1
            if not names:
                fail(f"{src}: {where}: no metric name in expression {expr!r}")
                bad += 1
            for n in sorted(names):
                names_here.add(n)
                if n in exported or n in PROMETHEUS_BUILTIN:
                    continue
                if n in pending:
                    used_pending.add(n)
                    continue
                base = next((n[: -len(s)] for s in HISTOGRAM_SUFFIXES if n.endswith(s)), None)
                hint = ""
                if n in types and types[n] == "histogram":
                    hint = " (a histogram: use _bucket/_sum/_count)"
                elif base and base in exported:
                    hint = f" ({base} is not a histogram)"
                fail(f"{src}: {where}: metric {n!r} is not exported by the server and not in "
                     f"{Path(a.pending).name}{hint}")
                bad += 1
        n_exp = len([n for n in names_here if n in exported])
        print(f"  {src}: {len(exprs)} expressions, {len(names_here)} metric names "
              f"({n_exp} exported, {len(names_here & pending)} planned, "
              f"{len(names_here & PROMETHEUS_BUILTIN)} Prometheus built-in)")
    for where, metric in hpa_custom_metrics([Path(h) for h in a.hpa]):
        if metric not in served:
            fail(f"{where}: custom metric {metric!r} is not served by the prometheus-adapter rules "
                 f"(serves: {sorted(served)})")
            bad += 1
        else:
            print(f"  {where}: metric {metric!r} is served by the adapter")
    for n in sorted(pending & exported):
        print(f"  note: {n} is now exported; remove it from {a.pending}")
    return 1 if bad else 0


def cmd_dashboard_rules(a: argparse.Namespace) -> int:
    rules = []
    for i, (where, expr) in enumerate(dashboard_exprs(Path(a.dashboard))):
        rules.append({"record": f"dashboard:expr_{i}", "expr": substitute_templates(expr),
                      "labels": {"panel": where[:60]}})
    Path(a.out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    print(f"  wrote {len(rules)} dashboard expressions to {a.out}")
    return 0 if rules else 1


# ---------------------------------------------------------------------------------------------
# Custom resources
# ---------------------------------------------------------------------------------------------

def require(doc: dict, path: str, errors: list[str], where: str):
    node = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node or node[part] in (None, "", [], {}):
            errors.append(f"{where}: missing required field {path}")
            return None
        node = node[part]
    return node


def validate_core(obj: dict, where: str, errors: list[str], k8s_version: str) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        errors.append(f"{where}: {e.message} at {'.'.join(str(p) for p in e.path)}")


def cmd_crds(a: argparse.Namespace) -> int:
    docs: list[tuple[str, dict]] = []
    for f in a.files:
        for d in load_yaml_docs(Path(f)):
            docs.append((f, d))
    services = [d for f, d in docs if d.get("kind") == "Service"]
    runtimes = {d["metadata"]["name"]: d for f, d in docs
                if d.get("kind") in ("ServingRuntime", "ClusterServingRuntime")}
    errors: list[str] = []
    checked = 0
    for f, d in docs:
        kind = d.get("kind")
        where = f"{Path(f).name} {kind}/{d.get('metadata', {}).get('name')}"
        if kind == "ServiceMonitor":
            checked += 1
            if d.get("apiVersion") != "monitoring.coreos.com/v1":
                errors.append(f"{where}: apiVersion must be monitoring.coreos.com/v1")
            require(d, "metadata.name", errors, where)
            sel = require(d, "spec.selector.matchLabels", errors, where) or {}
            eps = require(d, "spec.endpoints", errors, where) or []
            matching = [s for s in services
                        if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
            if not matching:
                errors.append(f"{where}: selector {sel} matches no Service in the checked files")
            for ep in eps:
                port = ep.get("port")
                if not port and not ep.get("targetPort"):
                    errors.append(f"{where}: endpoint needs port or targetPort")
                for s in matching:
                    if port and port not in [p.get("name") for p in s["spec"]["ports"]]:
                        errors.append(f"{where}: endpoint port {port!r} is not a named port of Service "
                                      f"{s['metadata']['name']}")
        elif kind in ("ServingRuntime", "ClusterServingRuntime"):
            checked += 1
            if d.get("apiVersion") != "serving.kserve.io/v1alpha1":
                errors.append(f"{where}: apiVersion must be serving.kserve.io/v1alpha1")
            require(d, "metadata.name", errors, where)
            fmts = require(d, "spec.supportedModelFormats", errors, where) or []
            for fm in fmts:
                if not fm.get("name"):
                    errors.append(f"{where}: supportedModelFormats entry without name")
            if "v2" not in (d.get("spec", {}).get("protocolVersions") or []):
                errors.append(f"{where}: spec.protocolVersions must include v2")
            containers = require(d, "spec.containers", errors, where) or []
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
                   "spec": {"containers": containers}}
            validate_core(pod, f"{where} spec.containers (as core/v1 Containers)", errors, a.k8s_version)
        elif kind == "InferenceService":
            checked += 1
            if d.get("apiVersion") != "serving.kserve.io/v1beta1":
                errors.append(f"{where}: apiVersion must be serving.kserve.io/v1beta1")
            require(d, "metadata.name", errors, where)
            model = require(d, "spec.predictor.model", errors, where) or {}
            fmt = require(d, "spec.predictor.model.modelFormat.name", errors, where)
            require(d, "spec.predictor.model.storageUri", errors, where)
            rt_name = model.get("runtime")
            if rt_name:
                rt = runtimes.get(rt_name)
                if rt is None:
                    errors.append(f"{where}: runtime {rt_name!r} is not defined in the checked files")
                elif fmt not in [m["name"] for m in rt["spec"]["supportedModelFormats"]]:
                    errors.append(f"{where}: runtime {rt_name} does not support model format {fmt!r}")
            if model.get("protocolVersion", "v2") != "v2":
                errors.append(f"{where}: protocolVersion must be v2 for ferrite")
            pct = d["spec"]["predictor"].get("canaryTrafficPercent")
            if pct is not None and not (isinstance(pct, int) and 0 <= pct <= 100):
                errors.append(f"{where}: canaryTrafficPercent must be an integer 0..100")
            if "resources" in model:
                pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
                       "spec": {"containers": [{"name": "c", "image": "x", "resources": model["resources"]}]}}
                validate_core(pod, f"{where} predictor.model.resources", errors, a.k8s_version)
        else:
            continue
        print(f"  checked {where}")
    for e in errors:
        fail(e)
    if checked == 0:
        fail("no custom resources found")
        return 1
    return 1 if errors else 0


# ---------------------------------------------------------------------------------------------
# Compose and cross-file consistency
# ---------------------------------------------------------------------------------------------

def cmd_compose(a: argparse.Namespace) -> int:
    errors: list[str] = []
    for f in a.files:
        p = Path(f)
        doc = yaml.safe_load(p.read_text())
        services = doc.get("services")
        if not isinstance(services, dict) or not services:
            errors.append(f"{f}: no services")
            continue
        for name, svc in services.items():
            if not a.override and "image" not in svc and "build" not in svc:
                errors.append(f"{f}: service {name} has neither image nor build")
            build = svc.get("build")
            if isinstance(build, dict):
                ctx = (p.parent / build.get("context", ".")).resolve()
                if not (ctx / build.get("dockerfile", "Dockerfile")).is_file():
                    errors.append(f"{f}: service {name}: {ctx / build.get('dockerfile', 'Dockerfile')} missing")
            for v in svc.get("volumes", []):
                src = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
                if src.startswith((".", "/")) and not (p.parent / src).exists():
                    errors.append(f"{f}: service {name}: bind-mount source {src} does not exist")
                elif not src.startswith((".", "/")) and src not in (doc.get("volumes") or {}):
                    errors.append(f"{f}: service {name}: named volume {src} is not declared")
            for dep in svc.get("depends_on", []):
                if dep not in services:
                    errors.append(f"{f}: service {name} depends on unknown service {dep}")
        print(f"  {f}: {len(services)} services ({', '.join(services)})")
    for e in errors:
        fail(e)
    return 1 if errors else 0


def cmd_consistency(a: argparse.Namespace) -> int:
    errors: list[str] = []
    # ConfigMap model configs vs the repository
    for d in load_yaml_docs(ROOT / "deploy/k8s/configmap.yaml"):
        for key, text in d.get("data", {}).items():
            m = re.fullmatch(r"(.+)\.config\.toml", key)
            if not m:
                continue
            repo_cfg = ROOT / "models" / m.group(1) / "config.toml"
            if not repo_cfg.is_file():
                errors.append(f"configmap key {key}: {repo_cfg} does not exist")
            elif repo_cfg.read_text() != text:
                errors.append(f"configmap key {key} differs from {repo_cfg.relative_to(ROOT)}")
            else:
                print(f"  configmap {key} == models/{m.group(1)}/config.toml")
    # Grafana provider path vs compose mount
    compose = yaml.safe_load((ROOT / "deploy/compose/docker-compose.yml").read_text())
    provider = yaml.safe_load((ROOT / "deploy/compose/grafana/provisioning/dashboards/ferrite.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = [v.split(":")[1] for v in compose["services"]["grafana"]["volumes"] if isinstance(v, str)]
    if not any(m.startswith(path.rstrip("/") + "/") and m.endswith(".json") for m in mounts):
        errors.append(f"grafana provider path {path} has no dashboard mounted in docker-compose.yml")
    else:
        print(f"  grafana provider path {path} holds the mounted dashboard")
    # Prometheus scrapes the metrics port that the compose service publishes
    prom = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    targets = [t for sc in prom["scrape_configs"] if sc["job_name"] == "ferrite"
               for st in sc["static_configs"] for t in st["targets"]]
    if "ferrite:8002" not in targets:
        errors.append(f"prometheus job ferrite does not scrape ferrite:8002 (targets {targets})")
    else:
        print("  prometheus job ferrite scrapes ferrite:8002")
    # Kubernetes: drain fits in the grace period
    for d in load_yaml_docs(ROOT / "deploy/k8s/deployment.yaml"):
        spec = d["spec"]["template"]["spec"]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        c = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        drain = int(env.get("FERRITE_EXIT_TIMEOUT_SECS", 30))
        pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pre_s = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0
        if not grace > drain + pre_s:
            errors.append(f"deployment: terminationGracePeriodSeconds {grace} <= preStop {pre_s} + drain {drain}")
        else:
            print(f"  deployment: grace {grace}s > preStop {pre_s}s + drain {drain}s")
    for e in errors:
        fail(e)
    return 1 if errors else 0


def strategic_merge(base, patch):
    """Kubernetes' strategic merge, as far as deploy/k8s/tls/ needs it: maps merge key by key (a null
    deletes the key); lists of maps merge on `name` (containers, env, volumes) or `mountPath`
    (volumeMounts)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
                continue
            out[k] = strategic_merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) for x in base + patch):
        key = "mountPath" if all("mountPath" in x for x in base + patch) else "name"
        out = list(base)
        for item in patch:
            i = next((j for j, b in enumerate(out) if b.get(key) == item.get(key)), None)
            if i is None:
                out.append(item)
            else:
                out[i] = strategic_merge(out[i], item)
        return out
    return patch


def cmd_tls_patch(a: argparse.Namespace) -> int:
    """Writes deployment.yaml with the TLS patch (and, with --mutual, the mTLS patch after it)
    applied, for kubernetes-validate, and checks that every probe can pass: HTTPS on the HTTP port
    with server-only TLS; plain HTTP on the metrics port with mutual TLS (kubelet has no client
    certificate). Certificate, key and client CA paths must lie in mounted Secrets."""
    merged = load_yaml_docs(ROOT / "deploy/k8s/deployment.yaml")[0]
    for patch in a.patches:
        merged = strategic_merge(merged, load_yaml_docs(ROOT / patch)[0])
    Path(a.out).write_text(yaml.safe_dump(merged, sort_keys=False))
    errors: list[str] = []
    spec = merged["spec"]["template"]["spec"]
    c = spec["containers"][0]
    ports = {p["name"] for p in c.get("ports", [])}
    want = ("metrics", "HTTP") if a.mutual else ("http", "HTTPS")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c.get(probe, {}).get("httpGet", {})
        got = (get.get("port"), get.get("scheme"))
        if got != want:
            errors.append(f"{probe}: port/scheme {got}, expected {want}")
        if get.get("port") not in ports:
            errors.append(f"{probe}: port {get.get('port')!r} is not a container port ({sorted(ports)})")
    secrets = {v["name"] for v in spec.get("volumes", []) if "secret" in v}
    mounts = [m["mountPath"].rstrip("/") + "/" for m in c.get("volumeMounts", []) if m["name"] in secrets]
    env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
    needed = ("FERRITE_TLS_CERT", "FERRITE_TLS_KEY") + (("FERRITE_TLS_CLIENT_CA",) if a.mutual else ())
    for var in needed:
        if not any(env.get(var, "").startswith(m) for m in mounts):
            errors.append(f"{var}={env.get(var)!r} is not in a mounted Secret ({mounts})")
    for e in errors:
        fail(e)
    if not errors:
        print(f"  TLS patch: probes {want[1]} on port {want[0]}, certificates from Secret mounts {mounts}")
    return 1 if errors else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("names")
    n.add_argument("--metrics", required=True, help="a /metrics scrape of a running server")
    n.add_argument("--pending", required=True)
    n.add_argument("--dashboard", action="append", default=[])
    n.add_argument("--rules", action="append", default=[])
    n.add_argument("--adapter", action="append", default=[])
    n.add_argument("--hpa", action="append", default=[])
    n.set_defaults(func=cmd_names)
    d = sub.add_parser("dashboard-rules")
    d.add_argument("dashboard")
    d.add_argument("out")
    d.set_defaults(func=cmd_dashboard_rules)
    c = sub.add_parser("crds")
    c.add_argument("--k8s-version", default="1.37.0")
    c.add_argument("files", nargs="+")
    c.set_defaults(func=cmd_crds)
    co = sub.add_parser("compose")
    co.add_argument("--override", action="store_true", help="files are overrides (no image/build needed)")
    co.add_argument("files", nargs="+")
    co.set_defaults(func=cmd_compose)
    k = sub.add_parser("consistency")
    k.set_defaults(func=cmd_consistency)
    t = sub.add_parser("tls-patch")
    t.add_argument("--mutual", action="store_true", help="the last patch turns on mutual TLS")
    t.add_argument("patches", nargs="+")
    t.add_argument("out")
    t.set_defaults(func=cmd_tls_patch)
    a = ap.parse_args()
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
