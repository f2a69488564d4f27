#!/usr/bin/env bash
# bash deploy/validate.sh — checks everything under deploy/ without a cluster:
#   1. yamllint on every *.yaml (config below), and on the mesh config embedded in
#      self-managed/mesh-config.yaml;
#   2. kubernetes-validate --strict (unknown fields are errors) on every Kubernetes manifest,
#      against the newest Kubernetes version the installed kubernetes-validate bundles
#      (K8S_VERSION=1.xx.0 picks another);
#   3. the seccomp profile: valid JSON (python3 -m json.tool) and the calls ringmesh needs;
#   4. if kustomize or kubectl is on PATH: the kustomizations and the Helm post-renderer (on a
#      chart-shaped fixture) render, and what they render validates too;
#   5. the waypoint (deploy/waypoint/check.py): the Gateway API objects, which
#      kubernetes-validate has no schema for, and whether Gateway, Service, Deployment and the
#      routes ConfigMap fit together as istiod and `ringmesh waypoint` need them to; yamllint
#      on the files inside its ConfigMaps; and, if a ringmesh binary is at $RINGMESH or on
#      PATH, the routes loaded by `ringmesh waypoint --dry-run`.
# Installs yamllint and kubernetes-validate from PyPI when they are missing (the only network
# use); needs no root beyond what pip needs. Exits non-zero, saying why, on any failure.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.." || exit 1
py=${PYTHON:-python3}
me=deploy/validate.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() {
    echo "$me: FAILED: $*" >&2
    exit 1
}

# Files under deploy/ that are YAML but not Kubernetes objects.
not_manifest() {
    case "$1" in
        */kustomization.yaml) return 0 ;;         # kustomize input
        deploy/istio-ztunnel-values.yaml) return 0 ;;   # Helm values
        deploy/postrender/plugin.yaml) return 0 ;;      # Helm 4 plugin manifest
    esac
    return 1
}

# --- tools -----------------------------------------------------------------------------------
need() { # python module, PyPI package
    "$py" -c "import $1" 2>/dev/null && return 0
    echo "$me: installing $2 from PyPI"
    "$py" -m pip install --quiet "$2" 2>"$tmp/pip.err" ||
        "$py" -m pip install --quiet --user "$2" 2>>"$tmp/pip.err" || {
        cat "$tmp/pip.err" >&2
        fail "cannot install $2 (run it inside a virtualenv, or install it yourself)"
    }
    "$py" -c "import $1" 2>/dev/null || fail "$2 installed but 'import $1' fails"
}
command -v "$py" >/dev/null || fail "$py not found"
need yamllint yamllint
need kubernetes_validate kubernetes-validate

k8s=${K8S_VERSION:-$("$py" -c 'import kubernetes_validate.utils as u; print(u.latest_version())')} ||
    fail "cannot ask kubernetes-validate for its Kubernetes versions"

mapfile -t yamls < <(find deploy -type f \( -name '*.yaml' -o -name '*.yml' \) | LC_ALL=C sort)
[ "${#yamls[@]}" -gt 0 ] || fail "no YAML files under deploy/"

# --- 1. yamllint -----------------------------------------------------------------------------
lintcfg='
extends: default
rules:
  line-length: {max: 120, allow-non-breakable-words: true}
  indentation: {spaces: 2, indent-sequences: whatever}
  document-start: disable
  comments: {min-spaces-from-content: 1}
  comments-indentation: disable
  truthy: {allowed-values: ["true", "false"], check-keys: false}
  braces: {max-spaces-inside: 1}
  brackets: {max-spaces-inside: 1}
'
if ! "$py" -m yamllint -f parsable -d "$lintcfg" "${yamls[@]}" >"$tmp/lint.out" 2>&1; then
    cat "$tmp/lint.out" >&2
    fail "yamllint found errors (above)"
fi

# The ztunnel local config inside the ConfigMap: lint it, and check its top-level shape
# (!Exact-style tags are kept as opaque values).
"$py" - deploy/self-managed/mesh-config.yaml >"$tmp/mesh.yaml" <<'EOF' || fail "deploy/self-managed/mesh-config.yaml: no data.mesh.yaml"
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
sys.stdout.write(doc["data"]["mesh.yaml"])
EOF
if ! "$py" -m yamllint -f parsable -d "$lintcfg" - <"$tmp/mesh.yaml" >"$tmp/lint.out" 2>&1; then
    sed 's/^stdin/deploy\/self-managed\/mesh-config.yaml data.mesh.yaml/' "$tmp/lint.out" >&2
    fail "yamllint found errors in the embedded mesh config (above; line numbers inside mesh.yaml)"
fi
"$py" - "$tmp/mesh.yaml" <<'EOF' || fail "deploy/self-managed/mesh-config.yaml: data.mesh.yaml is not ztunnel local config (above)"
import sys, yaml
class L(yaml.SafeLoader):
    pass
L.add_multi_constructor("!", lambda loader, tag, node: loader.construct_scalar(node))
cfg = yaml.load(open(sys.argv[1]), Loader=L) or {}
bad = set(cfg) - {"workloads", "services", "policies"}
if bad:
    sys.exit(f"unknown top-level keys {sorted(bad)} (ztunnel local config has workloads, services, policies)")
for w in cfg.get("workloads", []):
    missing = {"namespace", "workloadIps"} - set(w)
    if missing:
        sys.exit(f"workload {w.get('name', '?')}: missing {sorted(missing)}")
EOF

# --- 2. kubernetes-validate ------------------------------------------------------------------
manifests=()
for f in "${yamls[@]}"; do
    not_manifest "$f" || manifests+=("$f")
done
[ "${#manifests[@]}" -gt 0 ] || fail "no Kubernetes manifests under deploy/"

validated=0 # objects in the last validate call
gwapi=0     # Gateway API objects set aside in the last validate call (checked in 5.)
validate() { # label, file
    local label=$1 f=$2 out counts rest
    # Gateway API objects are CRDs kubernetes-validate has no schema for: set them aside.
    counts=$("$py" deploy/waypoint/check.py split "$f" "$tmp/core.yaml" 2>&1) ||
        fail "$label: cannot read it as YAML: $counts"
    read -r gwapi rest <<<"$counts"
    validated=0
    [ "$gwapi" -gt 0 ] && f=$tmp/core.yaml
    [ "$rest" -gt 0 ] || return 0
    out=$("$py" -m kubernetes_validate --strict -k "$k8s" "$f" 2>&1)
    local rc=$?
    # kubernetes-validate only warns (exit 0) for a kind it has no schema for: an error here.
    if [ $rc -ne 0 ] || grep -qE '^(ERROR|WARN|FATAL)' <<<"$out" || ! grep -q '^INFO' <<<"$out"; then
        grep -vE '^INFO' <<<"$out" >&2
        [ $rc -ne 0 ] || grep -qE '^(ERROR|WARN|FATAL)' <<<"$out" || echo "(no Kubernetes object found)" >&2
        fail "$label: not valid Kubernetes $k8s (strict) (above)"
    fi
    validated=$(grep -c '^INFO' <<<"$out")
}
objects=0
gwobjects=0
for f in "${manifests[@]}"; do
    validate "$f" "$f"
    objects=$((objects + validated))
    gwobjects=$((gwobjects + gwapi))
    [ $((validated + gwapi)) -gt 0 ] || fail "$f: no Kubernetes object in it"
done
rendered=""

# --- 3. seccomp profile ----------------------------------------------------------------------
profile=deploy/seccomp/ringmesh.json
"$py" -m json.tool "$profile" >/dev/null 2>"$tmp/json.err" || {
    cat "$tmp/json.err" >&2
    fail "$profile is not valid JSON"
}
"$py" - "$profile" <<'EOF' || fail "$profile: not the profile ringmesh needs (above)"
import json, sys
p = json.load(open(sys.argv[1]))
if p.get("defaultAction") != "SCMP_ACT_ERRNO":
    sys.exit("defaultAction must be SCMP_ACT_ERRNO (an allow-list)")
if not p.get("architectures"):
    sys.exit("no architectures")
allowed = {n for s in p.get("syscalls", []) if s.get("action") == "SCMP_ACT_ALLOW" for n in s.get("names", [])}
need = {"io_uring_setup", "io_uring_enter", "io_uring_register", "setns", "socket", "bind", "listen",
        "accept4", "connect", "setsockopt", "getsockopt", "sendmsg", "recvmsg", "epoll_wait", "epoll_ctl",
        "mmap", "futex", "clone", "execve"}
if need - allowed:
    sys.exit(f"not allowed: {sorted(need - allowed)}")
EOF

# --- 4. kustomize renders --------------------------------------------------------------------
if command -v kustomize >/dev/null 2>&1; then
    kbuild() { kustomize build "$1"; }
elif command -v kubectl >/dev/null 2>&1; then
    kbuild() { kubectl kustomize "$1"; }
fi
if [ "$(type -t kbuild)" = function ]; then
    for d in deploy/seccomp deploy/self-managed deploy/waypoint deploy/waypoint/istio-managed; do
        kbuild "$d" >"$tmp/render.yaml" 2>"$tmp/render.err" || {
            cat "$tmp/render.err" >&2
            fail "$d: kustomize cannot render it"
        }
        validate "$d (rendered by kustomize)" "$tmp/render.yaml"
        case $d in
            deploy/waypoint) "$py" deploy/waypoint/check.py manual "$tmp/render.yaml" ||
                fail "$d (rendered by kustomize): the waypoint's objects do not fit together (above)" ;;
            deploy/waypoint/istio-managed) "$py" deploy/waypoint/check.py managed "$tmp/render.yaml" ||
                fail "$d (rendered by kustomize): the Gateway and its overlay do not fit together (above)" ;;
        esac
    done
    fixture=deploy/postrender/testdata/ztunnel-rendered.yaml
    bash deploy/postrender/post-render.sh <"$fixture" >"$tmp/post.yaml" 2>"$tmp/post.err" || {
        cat "$tmp/post.err" >&2
        fail "deploy/postrender/post-render.sh failed on $fixture"
    }
    "$py" - "$tmp/post.yaml" <<'EOF' || fail "post-render.sh output: istio-proxy has no Localhost profiles/ringmesh.json (above)"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
ds = [d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "ztunnel"]
if len(docs) != 2 or len(ds) != 1:
    sys.exit(f"expected the fixture's 2 objects back, got {len(docs)}")
c = ds[0]["spec"]["template"]["spec"]["containers"][0]
sp = c["securityContext"].get("seccompProfile")
if c["name"] != "istio-proxy" or sp != {"type": "Localhost", "localhostProfile": "profiles/ringmesh.json"}:
    sys.exit(f"container {c['name']}: seccompProfile {sp}")
if c["securityContext"]["capabilities"]["add"] != ["NET_ADMIN", "SYS_ADMIN", "NET_RAW"]:
    sys.exit("the rest of the securityContext changed")
EOF
    validate "post-render.sh output" "$tmp/post.yaml"
    rendered=", kustomize renders and the post-renderer valid"
else
    rendered=" (kustomize renders skipped: neither kustomize nor kubectl on PATH)"
fi

# --- 5. the waypoint -------------------------------------------------------------------------
wp=deploy/waypoint
"$py" $wp/check.py manual $wp/gateway.yaml $wp/waypoint.yaml $wp/pdb.yaml $wp/routes/routes.yaml ||
    fail "$wp: the waypoint's objects do not fit together (above)"
"$py" $wp/check.py managed $wp/istio-managed/gateway.yaml $wp/istio-managed/overlay.yaml $wp/routes/routes.yaml ||
    fail "$wp/istio-managed: the Gateway and its overlay do not fit together (above)"
mkdir -p "$tmp/routes" "$tmp/overlay"
nroutes=$("$py" $wp/check.py routes $wp/routes/routes.yaml "$tmp/routes") ||
    fail "$wp/routes/routes.yaml: the route files inside it (above)"
"$py" - $wp/istio-managed/overlay.yaml "$tmp/overlay" <<'EOF' || fail "$wp/istio-managed/overlay.yaml: cannot read its data"
import sys, yaml
for k, v in yaml.safe_load(open(sys.argv[1]))["data"].items():
    open(f"{sys.argv[2]}/{k}.yaml", "w").write(v)
EOF
for inner in "$tmp"/routes/* "$tmp"/overlay/*; do
    case $inner in
        "$tmp"/routes/*) label="$wp/routes/routes.yaml data.${inner##*/}" ;;
        *) label="$wp/istio-managed/overlay.yaml data.$(basename "$inner" .yaml)" ;;
    esac
    if ! "$py" -m yamllint -f parsable -d "$lintcfg" - <"$inner" >"$tmp/lint.out" 2>&1; then
        sed "s|^stdin|$label|" "$tmp/lint.out" >&2
        fail "yamllint found errors in $label (above; line numbers inside it)"
    fi
done
# The routes as ringmesh itself reads them (offline: --dry-run loads and prints, connects nowhere).
ringmesh=${RINGMESH:-$(command -v ringmesh || true)}
if [ -n "$ringmesh" ]; then
    "$ringmesh" waypoint --dry-run --resources "$tmp/routes" --name waypoint --pod-namespace default \
        --xds-address istiod.istio-system.svc:15012 >"$tmp/dry.json" 2>"$tmp/dry.err" || {
        cat "$tmp/dry.err" >&2
        fail "$wp/routes/routes.yaml: $ringmesh waypoint --dry-run refuses the routes (above)"
    }
    "$py" - "$tmp/dry.json" <<'EOF' || fail "$wp/routes/routes.yaml: ringmesh waypoint --dry-run (above)"
import json, sys
out = json.load(open(sys.argv[1]))
if out.get("routes", 0) < 1:
    sys.exit(f"ringmesh loaded no route: {out}")
# --dry-run knows no services, so every parent and backend is "not found"; anything else in a
# failed condition's message is a mistake in the route itself.
import re
offline = re.compile(r'parent service: ".*" not found|backend\(.*\) not found')
bad = [f"{r['kind']} {r['namespace']}/{r['name']}: {c['type']}: {part}"
       for r in out.get("status", []) for p in r.get("parents", []) for c in p.get("conditions", [])
       if c.get("status") == "False" for part in c.get("message", "").split("; ") if not offline.fullmatch(part)]
if bad:
    sys.exit("\n".join(bad))
EOF
    dry=", routes loaded by $ringmesh --dry-run"
else
    dry=" (ringmesh --dry-run skipped: set RINGMESH or put ringmesh on PATH)"
fi
waypoint="waypoint objects consistent ($gwobjects Gateway API objects, $nroutes objects in the route files)$dry"

echo "$me: ${#manifests[@]} manifests valid ($objects objects, Kubernetes $k8s strict), ${#yamls[@]} YAML files lint-clean, seccomp profile valid$rendered, $waypoint"
