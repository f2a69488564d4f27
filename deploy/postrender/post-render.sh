#!/usr/bin/env bash
# Helm post-renderer: reads the manifests Helm rendered on stdin, writes them to stdout with
#   securityContext.seccompProfile: {type: Localhost, localhostProfile: profiles/ringmesh.json}
# on container istio-proxy of DaemonSet ztunnel (see kustomization.yaml beside this script).
#
#   Helm 3:  helm upgrade --install ztunnel istio/ztunnel ... --post-renderer deploy/postrender/post-render.sh
#   Helm 4:  helm plugin install deploy/postrender
#            helm upgrade --install ztunnel istio/ztunnel ... --post-renderer ringmesh-seccomp
#
# Needs `kustomize` or `kubectl` (which has kustomize built in) on PATH. Writes nothing but a
# temporary directory, removed on exit. Fails (and so fails the helm command) if the result
# does not carry the profile.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat >"$work/helm-rendered.yaml"
cp "$here/kustomization.yaml" "$work/kustomization.yaml"

if command -v kustomize >/dev/null 2>&1; then
    kustomize build "$work" >"$work/out.yaml"
elif command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize "$work" >"$work/out.yaml"
else
    echo "post-render.sh: needs kustomize or kubectl on PATH" >&2
    exit 1
fi

if ! grep -q 'localhostProfile: profiles/ringmesh.json' "$work/out.yaml"; then
    echo "post-render.sh: no DaemonSet ztunnel in the rendered chart, nothing was patched" \
         "(a renamed DaemonSet (resourceName) needs the target in kustomization.yaml changed)" >&2
    exit 1
fi
cat "$work/out.yaml"
