#!/usr/bin/env bash
# End-to-end scenarios against a real cluster: installs the Helm chart charts/sluice with the
# image in SLUICE_IMAGE, deploys a small backend, and checks as a user would, with kubectl and
# curl (through `kubectl port-forward`): route status and observedGeneration, serving, 503 when
# the backend scales to zero, an invalid route rejected alone with a message naming the field,
# an API-key route whose Secret appears later and then rotates, RBAC limits (Secrets readable
# one by one, by name), leader election. Then removes everything it created.
#
#   SLUICE_IMAGE=sluice:dev e2e/cluster.sh       # e.g. after `kind load docker-image sluice:dev`
#
# Needs KUBECONFIG pointing at a reachable cluster, helm (3 or 4), kubectl, curl; skipped, with
# exit 0, when any of KUBECONFIG, the cluster, helm, kubectl or SLUICE_IMAGE is missing. Setting
# SLUICE_IMAGE is the opt-in: a KUBECONFIG exported for other work never installs anything.
# Everything lives in two fresh namespaces, e2e-sluice-ID (the release, Pod Security
# "restricted") and e2e-app-ID (the backend and routes; the only namespace sluice watches unless
# E2E_CLUSTER_WIDE=1). The CRDs are applied server-side first and deleted at the end only if
# this run created them.
#
# Options: E2E_PULL_POLICY (IfNotPresent), E2E_TIMEOUT seconds per wait (180), E2E_KEEP=1 keeps
# the namespaces for debugging, E2E_BACKEND_IMAGE (registry.k8s.io/e2e-test-images/agnhost:2.53).
# Prints `ok - …` / `not ok - …` per check and `N passed, M failed`; exits 1 if anything failed.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1

skip() {
  echo "skipped: $* (cluster scenarios; standalone ones: e2e/standalone.sh)"
  exit 0
}
# Every missing prerequisite is named at once, so that one run says all there is to set up.
missing=()
[[ -n "${KUBECONFIG:-}" ]] || missing+=("KUBECONFIG")
for tool in kubectl helm curl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool on PATH")
done
[[ -n "${SLUICE_IMAGE:-}" ]] || missing+=("SLUICE_IMAGE (the opt-in: the image to install)")
if ((${#missing[@]} > 0)); then
  skip "missing $(IFS=,; echo "${missing[*]}" | sed 's/,/, /g')"
fi
kubectl version --request-timeout=10s >/dev/null 2>&1 ||
  skip "the cluster in KUBECONFIG ($(kubectl config current-context 2>/dev/null || echo '?')) is not reachable"

timeout_s="${E2E_TIMEOUT:-180}"
backend_image="${E2E_BACKEND_IMAGE:-registry.k8s.io/e2e-test-images/agnhost:2.53}"
id="$(date +%s)-$((RANDOM % 1000))"
sys_ns="e2e-sluice-$id"
app_ns="e2e-app-$id"
release=sluice
work="$(mktemp -d "${TMPDIR:-/tmp}/sluice-e2e-cluster.XXXXXX")"
pf_pid=""
created_crds=()
# shellcheck source=e2e/tap.sh
source "$(dirname "${BASH_SOURCE[0]}")/tap.sh"

# SLUICE_IMAGE as the chart's repository and tag; `repo@sha256:x` splits into `repo@sha256`
# and `x`, which the chart joins back with ':'.
image_repo="${SLUICE_IMAGE%:*}"
image_tag="${SLUICE_IMAGE##*:}"
if [[ "$image_repo" == "$SLUICE_IMAGE" || "$image_tag" == */* ]]; then
  image_repo="$SLUICE_IMAGE"
  image_tag=latest
fi

# wait_until SECONDS COMMAND...: polls every second; fails after SECONDS.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}
# eventually SECONDS NAME COMMAND... [-- DIAGNOSTIC-COMMAND...]: ok once COMMAND succeeds within
# SECONDS; otherwise not ok, with what the diagnostic command prints after the wait.
eventually() {
  local limit="$1" name="$2"
  shift 2
  local cmd=()
  while (($#)) && [[ "$1" != "--" ]]; do cmd+=("$1"); shift; done
  (($#)) && shift
  if wait_until "$limit" "${cmd[@]}"; then
    ok "$name"
  elif (($#)); then
    not_ok "$name" "$("$@" 2>&1)"
  else
    not_ok "$name"
  fi
}
# require …: as check, but a failure stops the run (the later scenarios would mean nothing).
require() {
  check "$@"
  if ((failed > 0)); then
    echo "$passed passed, $failed failed (stopped early)"
    exit 1
  fi
}
k() { kubectl --request-timeout=30s "$@"; }
# quiet COMMAND...: runs it silently; on failure prints its output as diagnostics.
quiet() {
  "$@" >"$work/out" 2>&1 && return 0
  sed 's/^/#   /' "$work/out"
  return 1
}

diagnostics() {
  echo "# --- diagnostics"
  k -n "$sys_ns" get all,lease 2>&1 | sed 's/^/#   /'
  k -n "$app_ns" get gatewayroutes,deploy,endpointslices -o wide 2>&1 | sed 's/^/#   /'
  k -n "$app_ns" get gatewayroutes -o jsonpath='{range .items[*]}{.metadata.name} gen {.metadata.generation}: {range .status.conditions[*]}{.type}={.status} ({.message}) {end}{"\n"}{end}' 2>&1 |
    sed 's/^/#   /'
  k -n "$sys_ns" logs -l "app.kubernetes.io/instance=$release" --tail=40 --prefix 2>&1 |
    sed 's/^/#   /'
}
cleanup() {
  trap - EXIT INT TERM
  [[ -n "$pf_pid" ]] && kill "$pf_pid" 2>/dev/null
  if ((failed > 0)); then diagnostics; fi
  if [[ -n "${E2E_KEEP:-}" ]]; then
    echo "# E2E_KEEP: left namespaces $sys_ns and $app_ns (helm -n $sys_ns uninstall $release)"
  else
    helm uninstall "$release" -n "$sys_ns" >/dev/null 2>&1
    k delete namespace "$sys_ns" "$app_ns" --wait=false >/dev/null 2>&1
    for crd in "${created_crds[@]}"; do
      k delete "$crd" --wait=false >/dev/null 2>&1
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# fetch PATH [curl args...]: GET through the gateway; sets $code and writes the body and
# headers to files.
body="$work/body"
hdrs="$work/headers"
fetch() {
  local path="$1"
  shift
  code="$(curl -sS --max-time 10 -o "$body" -D "$hdrs" -w '%{http_code}' "$@" \
    "http://127.0.0.1:$gw_port$path" 2>"$work/curl.err")" || true
  [[ -n "$code" ]] || code=000
}
code=000
status_is() { fetch "$1"; [[ "$code" == "$2" ]]; }
last_response() { echo "last response: $code $(head -c 300 "$body" 2>/dev/null)"; }
header() { grep -i "^$1:" "$hdrs" | head -n 1 | cut -d: -f2- | sed 's/^ *//' | tr -d '\r'; }

# condition ROUTE TYPE: prints generation|status.observedGeneration|status|observedGeneration|message
condition() {
  local q="?(@.type==\"$2\")"
  k -n "$app_ns" get gatewayroute "$1" -o jsonpath="{.metadata.generation}|{.status.observedGeneration}|{.status.conditions[$q].status}|{.status.conditions[$q].observedGeneration}|{.status.conditions[$q].message}" 2>/dev/null
}
# condition_is ROUTE TYPE True|False: the condition has that status for the current generation
# (status.observedGeneration and, when set, the condition's own observedGeneration).
condition_is() {
  local gen og st cog
  IFS="|" read -r gen og st cog _ <<<"$(condition "$1" "$2")"
  [[ -n "$gen" && "$st" == "$3" && "$og" == "$gen" && (-z "$cog" || "$cog" == "$gen") ]]
}

# ---------------------------------------------------------------------------------------------
echo "# context $(kubectl config current-context), image $image_repo:$image_tag, namespaces $sys_ns $app_ns"

require "namespace $sys_ns" quiet k create namespace "$sys_ns"
require "namespace $app_ns" quiet k create namespace "$app_ns"
# The chart's pods must pass the "restricted" Pod Security Standard.
quiet k label namespace "$sys_ns" pod-security.kubernetes.io/enforce=restricted

crds=()
for f in charts/sluice/crds/*.yaml; do
  crds+=("crd/$(basename "$f" .yaml)")  # each file is named after its CRD
  k get "${crds[-1]}" >/dev/null 2>&1 || created_crds+=("${crds[-1]}")
done
require "CRDs apply (server-side)" \
  quiet k apply --server-side --force-conflicts -f charts/sluice/crds/
require "CRDs are established" \
  quiet k wait --for=condition=Established "${crds[@]}" --timeout=60s

helm_args=(
  --namespace "$sys_ns" --skip-crds
  --set-string "image.repository=$image_repo" --set-string "image.tag=$image_tag"
  --set "image.pullPolicy=${E2E_PULL_POLICY:-IfNotPresent}"
  --set service.type=ClusterIP --set log.format=plain
)
[[ -n "${E2E_CLUSTER_WIDE:-}" ]] || helm_args+=(--set "watchNamespaces={$app_ns}")
# The one Secret a route below references: RBAC lets sluice read that one and no other.
helm_args+=(--set "secretNames={partner-keys}")
require "helm install" quiet helm install "$release" charts/sluice "${helm_args[@]}"
require "the gateway rolls out (restricted Pod Security, probes pass)" \
  quiet k -n "$sys_ns" rollout status "deployment/$release" --timeout="${timeout_s}s"

# The backend: agnhost netexec answers GET /hostname with the pod's name.
require "backend applied" quiet k -n "$app_ns" apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: netexec
        image: $backend_image
        args: ["netexec", "--http-port=8080"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /hostname, port: 8080}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
EOF
require "the backend rolls out" \
  quiet k -n "$app_ns" rollout status deployment/echo --timeout="${timeout_s}s"

require "route good applied" quiet k -n "$app_ns" apply -f - <<'EOF'
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata: {name: good}
spec:
  rules:
  - name: hostname
    matches: [{path: {type: PathPrefix, value: /hostname}}]
    backendRefs: [{name: echo, port: 80}]
EOF
eventually "$timeout_s" "route good: Programmed=True for generation 1" \
  condition_is good Programmed True -- condition good Programmed
check "route good: Accepted=True" condition_is good Accepted True -- "$(condition good Accepted)"
check "kubectl get gr shows the route as accepted and programmed" \
  grep -Eq '^good +.*True +True' <<<"$(k -n "$app_ns" get gr good --no-headers 2>&1)" \
  -- "$(k -n "$app_ns" get gr good 2>&1)"

# Through the gateway Service, as a client inside the cluster would reach it.
# kubectl itself in the background (not the k function), so that $! is the process to stop.
kubectl -n "$sys_ns" port-forward "service/$release" :80 >"$work/pf.log" 2>&1 &
pf_pid=$!
gw_port=""
pf_ready() {
  gw_port="$(grep -oE '127\.0\.0\.1:[0-9]+' "$work/pf.log" 2>/dev/null | head -n 1 | cut -d: -f2)"
  [[ -n "$gw_port" ]]
}
if ! wait_until 30 pf_ready; then
  not_ok "kubectl port-forward to the gateway Service" "$(cat "$work/pf.log")"
  echo "$passed passed, $failed failed"
  exit 1
fi

eventually 30 "GET /hostname through the gateway reaches the backend (200)" \
  status_is /hostname 200 -- last_response
check "the backend answered (pod name echo-…)" grep -q '^echo-' "$body" -- "body: $(head -c 200 "$body")"
check "the response carries x-request-id" test -n "$(header x-request-id)"
fetch /nothing-routes-here
check "an unrouted path gets 404 from the gateway" test "$code" == 404 -- "got $code"

# A new generation: status follows it, and the proxy serves it.
check "route good patched (generation 2)" quiet k -n "$app_ns" patch gr good --type=json -p \
  '[{"op": "add", "path": "/spec/rules/0/filters",
     "value": {"responseHeaders": {"set": [{"name": "x-e2e", "value": "v2"}]}}}]'
eventually "$timeout_s" "route good: Programmed=True for generation 2" \
  condition_is good Programmed True -- condition good Programmed
has_v2() { fetch /hostname; [[ "$code" == 200 && "$(header x-e2e)" == v2 ]]; }
eventually 30 "generation 2 serves (x-e2e: v2)" has_v2 -- last_response

# No ready endpoint: the gateway answers 503 itself, with a JSON error.
quiet k -n "$app_ns" scale deployment/echo --replicas=0
eventually 60 "backend scaled to 0: 503" status_is /hostname 503 -- last_response
check "the 503 is the gateway's JSON error" grep -q '"status":503' "$body" -- "body: $(head -c 200 "$body")"
quiet k -n "$app_ns" scale deployment/echo --replicas=1
eventually 90 "backend back to 1 replica: 200 again" status_is /hostname 200 -- last_response

# An invalid route is rejected alone, with the field named; the good one keeps serving.
check "route bad applied (the CRD schema lets it through)" quiet k -n "$app_ns" apply -f - <<'EOF'
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata: {name: bad}
spec:
  rules:
  - name: broken
    matches: [{path: {type: PathPrefix, value: /a/../b}}]
    backendRefs: [{name: echo, port: 80}]
EOF
eventually "$timeout_s" "route bad: Accepted=False" \
  condition_is bad Accepted False -- condition bad Accepted
check "route bad: the message names spec.rules[0].matches[0].path.value" \
  grep -qF 'spec.rules[0].matches[0].path.value' <<<"$(condition bad Accepted)" \
  -- "$(condition bad Accepted)"
check "route bad: Programmed=False" condition_is bad Programmed False -- "$(condition bad Programmed)"
check "route good: still Programmed=True" condition_is good Programmed True -- "$(condition good Programmed)"
check "route good: still serves (200)" status_is /hostname 200 -- "got $code"

# Authentication: a route needing an API key from a Secret that appears after the route.
check "route keyed applied (API key from Secret partner-keys, not there yet)" quiet k -n "$app_ns" apply -f - <<'EOF'
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata: {name: keyed}
spec:
  rules:
  - name: keyed
    matches: [{path: {type: Exact, value: /keyed}}]
    filters: {urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /hostname}}}
    authentication:
      apiKey: {secretRefs: [{name: partner-keys}]}
    backendRefs: [{name: echo, port: 80}]
EOF
eventually "$timeout_s" "route keyed: ResolvedRefs=False while its Secret is missing" \
  condition_is keyed ResolvedRefs False -- condition keyed ResolvedRefs
eventually 30 "no Secret yet: the rule refuses (503), never serves" status_is /keyed 503 -- last_response
check "Secret partner-keys applied" quiet k -n "$app_ns" apply -f - <<'EOF'
apiVersion: v1
kind: Secret
metadata: {name: partner-keys}
stringData: {acme: e2e-acme-key-0123456789}
EOF
keyed_with() { fetch /keyed -H "x-api-key: $1"; [[ "$code" == "$2" ]]; }
eventually 30 "the Secret appears: the key is accepted (200)" keyed_with e2e-acme-key-0123456789 200 -- last_response
check "a wrong key: 401" keyed_with wrong-key-0123456789 401 -- "got $code"
eventually "$timeout_s" "route keyed: ResolvedRefs=True" \
  condition_is keyed ResolvedRefs True -- condition keyed ResolvedRefs
check "Secret partner-keys edited (the key rotated)" quiet k -n "$app_ns" apply -f - <<'EOF'
apiVersion: v1
kind: Secret
metadata: {name: partner-keys}
stringData: {acme: e2e-acme-rotated-9876543210}
EOF
eventually 30 "the rotated key is accepted" keyed_with e2e-acme-rotated-9876543210 200 -- last_response
check "the old key is refused after the rotation (401)" keyed_with e2e-acme-key-0123456789 401 -- "got $code"

# Leader election and RBAC.
holder="$(k -n "$sys_ns" get lease sluice-leader -o jsonpath='{.spec.holderIdentity}' 2>/dev/null)"
pods="$(k -n "$sys_ns" get pods -l "app.kubernetes.io/instance=$release" -o jsonpath='{.items[*].metadata.name}')"
holder_is_pod() { [[ -n "$holder" && " $pods " == *" $holder "* ]]; }
check "Lease sluice-leader is held by a gateway pod" holder_is_pod -- "holder '$holder', pods: $pods"
sa="system:serviceaccount:$sys_ns:$release"
# can yes|no VERB RESOURCE [flags]: what `kubectl auth can-i` answers for sluice's account.
can() {
  local want="$1"
  shift
  [[ "$(k auth can-i "$@" --as="$sa" 2>/dev/null)" == "$want" ]]
}
check "sluice may watch GatewayRoutes in $app_ns" can yes watch gatewayroutes.sluice.dev -n "$app_ns"
check "sluice may patch GatewayRoute status" \
  can yes patch gatewayroutes.sluice.dev --subresource=status -n "$app_ns"
check "sluice may not list the namespace's Secrets" can no list secrets -n "$app_ns"
check "sluice may watch the one Secret a route names" can yes watch secrets/partner-keys -n "$app_ns"
check "sluice may not get Secrets, not even that one" can no get secrets/partner-keys -n "$app_ns"
check "sluice may not change GatewayRoutes" can no update gatewayroutes.sluice.dev -n "$app_ns"
if [[ -z "${E2E_CLUSTER_WIDE:-}" ]]; then
  check "sluice may not list Services outside its watch namespaces" can no list services -n default
fi

echo "$passed passed, $failed failed"
((failed == 0))
