"""Offline checks of deploy/waypoint (run by deploy/validate.sh; needs PyYAML).

kubernetes-validate has no schema for Gateway API kinds, and no schema can say whether the
objects fit together the way istiod and `ringmesh waypoint` need. This does both, for what
matters here:

  python3 check.py split IN OUT        copy IN to OUT without its Gateway API objects; print
                                       "<Gateway API objects> <other objects>"
  python3 check.py manual FILES...     the Gateway/ServiceAccount/Deployment/Service/PDB set
  python3 check.py managed FILES...    the Gateway + parametersRef overlay set
  python3 check.py routes FILE DIR     write the route ConfigMap's files into DIR, check them

Exits non-zero with one line per problem.
"""

import os
import re
import sys

import yaml

GWAPI = "gateway.networking.k8s.io/"
MESH_CONTROLLER = "istio.io-mesh-controller"
GW_NAME = "gateway.networking.k8s.io/gateway-name"
OVERLAY_KEYS = {"deployment", "service", "serviceAccount", "horizontalPodAutoscaler", "podDisruptionBudget"}
ROUTE_KINDS = {"HTTPRoute", "GRPCRoute", "Service"}
HOSTNAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

problems = []


def bad(msg):
    problems.append(msg)


def load(files):
    docs = []
    for f in files:
        with open(f) as fh:
            docs += [(f, d) for d in yaml.safe_load_all(fh) if d]
    return docs


def one(docs, kind, name=None):
    found = [d for _, d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        bad(f"expected one {kind}{' ' + name if name else ''}, found {len(found)}")
        return None
    return found[0]


def names(docs, kind):
    return {d["metadata"]["name"] for _, d in docs if d.get("kind") == kind}


def flags(args):
    out = {}
    for a in args[1:]:
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            out[k] = v
    return out


def check_gateway(gw, managed):
    if gw["apiVersion"] != GWAPI + "v1":
        bad(f"Gateway: apiVersion {gw['apiVersion']} (want {GWAPI}v1)")
    spec = gw.get("spec", {})
    if spec.get("gatewayClassName") != "istio-waypoint":
        bad(f"Gateway: gatewayClassName {spec.get('gatewayClassName')!r} (want istio-waypoint)")
    ls = spec.get("listeners", [])
    if len(ls) != 1 or ls[0].get("port") != 15008 or ls[0].get("protocol") != "HBONE" or not ls[0].get("name"):
        bad("Gateway: a waypoint has exactly one listener, a named one on port 15008 with protocol HBONE")
    wf = gw["metadata"].get("labels", {}).get("istio.io/waypoint-for")
    if wf not in (None, "service", "workload", "all", "none"):
        bad(f"Gateway: istio.io/waypoint-for {wf!r} (service, workload, all or none)")
    addrs = spec.get("addresses")
    if managed and addrs:
        bad("Gateway: spec.addresses makes it a manual deployment: istiod would not deploy it")
    if not managed:
        if not addrs or len(addrs) != 1 or addrs[0].get("type") != "Hostname":
            bad("Gateway: spec.addresses must be exactly one {type: Hostname} (otherwise istiod deploys an Envoy)")
            return None
        v = addrs[0].get("value", "")
        if not HOSTNAME.match(v):
            bad(f"Gateway: address {v!r} is not a hostname")
        return v
    return None


def pod_env(c, var, labels):
    for e in c.get("env", []):
        if e["name"] != var:
            continue
        if "value" in e:
            return e["value"]
        ref = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
        m = re.fullmatch(r"metadata\.labels\['([^']+)'\]", ref)
        if m:
            return labels.get(m.group(1))
        return "<" + ref + ">"
    return None


def check_container(c, pod, where, full):
    """full: a whole Deployment (manual); else the overlay (the template supplies the rest)."""
    if c.get("name") != "istio-proxy":
        bad(f"{where}: container {c.get('name')!r} (want istio-proxy, the name istiod's template and istioctl use)")
    args = c.get("args", [])
    if not args or args[0] != "waypoint":
        bad(f"{where}: args must start with the subcommand `waypoint`, got {args[:1]}")
    f = flags(args)
    for k in ("xds-address", "ca-address", "resources", "shards"):
        if k not in f:
            bad(f"{where}: no --{k}=...")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    res = f.get("resources")
    cms = []
    if res is not None:
        v = vols.get(mounts.get(res, ""), {})
        if "configMap" not in v:
            bad(f"{where}: --resources={res} is not the mountPath of a ConfigMap volume")
        else:
            cms.append(v["configMap"]["name"])
        if any(m.get("subPath") for m in c.get("volumeMounts", []) if m["mountPath"] == res):
            bad(f"{where}: the resources mount uses subPath, which never sees ConfigMap updates")
    if full:
        tok = f.get("auth-token", "/var/run/secrets/tokens/istio-token")
        tv = vols.get(mounts.get(os.path.dirname(tok), ""), {})
        srcs = tv.get("projected", {}).get("sources", [])
        if not any(s.get("serviceAccountToken", {}).get("audience") == "istio-ca"
                   and s["serviceAccountToken"].get("path") == os.path.basename(tok) for s in srcs):
            bad(f"{where}: {tok} is not a projected token with audience istio-ca")
        for k in ("xds-root-ca", "ca-root-ca"):
            root = f.get(k, "/var/run/secrets/istio/root-cert.pem")
            rv = vols.get(mounts.get(os.path.dirname(root), ""), {})
            if rv.get("configMap", {}).get("name") != "istio-ca-root-cert" or os.path.basename(root) != "root-cert.pem":
                bad(f"{where}: --{k}={root} is not root-cert.pem of ConfigMap istio-ca-root-cert")
        rp = c.get("readinessProbe", {}).get("httpGet", {})
        if rp.get("port") != 15021 or rp.get("path") != "/healthz/ready":
            bad(f"{where}: readinessProbe must be GET :15021/healthz/ready")
        cpu = str(c.get("resources", {}).get("limits", {}).get("cpu", ""))
        if cpu and f.get("shards") != cpu:
            bad(f"{where}: --shards={f.get('shards')} but limits.cpu {cpu} (one shard per CPU)")
        sc = c.get("securityContext", {})
        if sc.get("privileged") or sc.get("allowPrivilegeEscalation", True) or sc.get("capabilities", {}).get("add"):
            bad(f"{where}: the waypoint needs no privilege: privileged false, allowPrivilegeEscalation false, no capabilities added")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            bad(f"{where}: capabilities.drop must be [ALL]")
        psc = pod.get("securityContext", {})
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) and sc.get("runAsUser", psc.get("runAsUser"))):
            bad(f"{where}: runAsNonRoot with a non-zero runAsUser")
        for var in ("POD_NAME", "POD_NAMESPACE", "INSTANCE_IP", "SERVICE_ACCOUNT"):
            if pod_env(c, var, {}) is None:
                bad(f"{where}: no {var} (downward API)")
    return cms


def manual(files):
    docs = load(files)
    gw = one(docs, "Gateway")
    if not gw:
        return
    addr = check_gateway(gw, managed=False)
    gname = gw["metadata"]["name"]
    svc_name = None
    if addr:
        if "." in addr:
            m = re.fullmatch(r"([^.]+)\.([^.]+)\.svc\.cluster\.local", addr)
            ns = gw["metadata"].get("namespace")
            if not m or (ns and m.group(2) != ns):
                bad(f"Gateway: address {addr!r}: use the Service's short name, or <name>.<namespace>.svc.cluster.local "
                    "(ringmesh serves only <name>.<namespace>.svc.cluster.local)")
            svc_name = m.group(1) if m else None
        else:
            svc_name = addr
    svc = None
    if svc_name:
        svcs = [d for _, d in docs if d.get("kind") == "Service" and d["metadata"]["name"] == svc_name]
        if len(svcs) != 1:
            bad(f"Gateway: spec.addresses names Service {svc_name!r}; found {len(svcs)} Services of that name here")
        else:
            svc = svcs[0]
    dep = one(docs, "Deployment")
    if not (svc and dep):
        return
    pod = dep["spec"]["template"]
    labels = pod["metadata"].get("labels", {})
    if dep["spec"]["selector"]["matchLabels"].items() - labels.items():
        bad("Deployment: selector does not match its pod labels")
    want = {GW_NAME: gname, "gateway.istio.io/managed": MESH_CONTROLLER, "istio.io/dataplane-mode": "none"}
    for k, v in want.items():
        if labels.get(k) != v:
            bad(f"Deployment: pod label {k}={labels.get(k)!r} (want {v!r})")
    if svc.get("metadata", {}).get("labels", {}).get("gateway.istio.io/managed") != MESH_CONTROLLER:
        bad(f"Service {svc_name}: label gateway.istio.io/managed={MESH_CONTROLLER} keeps it from being bound to a waypoint")
    sel = svc["spec"].get("selector", {})
    if not sel or sel.items() - labels.items():
        bad(f"Service {svc_name}: selector {sel} does not select the Deployment's pods")
    ports = {p["port"]: p for p in svc["spec"].get("ports", [])}
    if 15008 not in ports or ports[15008].get("targetPort", 15008) not in (15008, "hbone"):
        bad(f"Service {svc_name}: needs port 15008 to the pods' 15008 (istiod waits for endpoints there)")
    spec = pod["spec"]
    sa = spec.get("serviceAccountName")
    if sa not in names(docs, "ServiceAccount"):
        bad(f"Deployment: serviceAccountName {sa!r} is not a ServiceAccount here")
    cs = spec.get("containers", [])
    if len(cs) != 1:
        bad(f"Deployment: expected one container, found {len(cs)}")
        return
    c = cs[0]
    wname = pod_env(c, "RINGMESH_WAYPOINT_NAME", labels) or sa
    if wname != svc_name:
        bad(f"Deployment: RINGMESH_WAYPOINT_NAME resolves to {wname!r}, but the Gateway's Service is {svc_name!r}")
    for cm in check_container(c, spec, "Deployment", full=True):
        if cm not in names(docs, "ConfigMap"):
            bad(f"Deployment: mounts ConfigMap {cm!r}, which is not here")
    for _, pdb in [(f, d) for f, d in docs if d.get("kind") == "PodDisruptionBudget"]:
        if pdb["spec"]["selector"]["matchLabels"].items() - labels.items():
            bad(f"PodDisruptionBudget {pdb['metadata']['name']}: selector does not match the pods")


def managed(files):
    docs = load(files)
    gw = one(docs, "Gateway")
    if not gw:
        return
    check_gateway(gw, managed=True)
    pr = gw["spec"].get("infrastructure", {}).get("parametersRef")
    if not pr or pr.get("kind") != "ConfigMap" or pr.get("group", "") != "":
        bad("Gateway: spec.infrastructure.parametersRef must name a core ConfigMap")
        return
    cm = one(docs, "ConfigMap", pr["name"])
    if not cm:
        return
    data = cm.get("data", {})
    if set(data) - OVERLAY_KEYS:
        bad(f"ConfigMap {pr['name']}: istiod refuses keys {sorted(set(data) - OVERLAY_KEYS)} (it takes {sorted(OVERLAY_KEYS)})")
    for k, v in data.items():
        o = yaml.safe_load(v)
        if not isinstance(o, dict) or "metadata" in o and ({"name", "namespace"} & set(o["metadata"])):
            bad(f"ConfigMap {pr['name']}: {k} must be a patch that keeps name and namespace")
    dep = yaml.safe_load(data.get("deployment", "{}")) or {}
    spec = dep.get("spec", {}).get("template", {}).get("spec", {})
    cs = spec.get("containers", [])
    if len(cs) != 1:
        bad(f"ConfigMap {pr['name']}: deployment must patch exactly the istio-proxy container")
        return
    c = cs[0]
    if not c.get("image"):
        bad(f"ConfigMap {pr['name']}: deployment sets no image (the template's is Envoy's)")
    labels = {GW_NAME: gw["metadata"]["name"]}
    wname = pod_env(c, "RINGMESH_WAYPOINT_NAME", labels)
    if wname != gw["metadata"]["name"]:
        bad(f"overlay: RINGMESH_WAYPOINT_NAME resolves to {wname!r}; istiod names the Service {gw['metadata']['name']!r}")
    for name in check_container(c, spec, f"ConfigMap {pr['name']} deployment", full=False):
        if name not in names(docs, "ConfigMap"):
            bad(f"overlay: mounts ConfigMap {name!r}, which is not here")


def routes(path, outdir):
    docs = load([path])
    cms = [d for _, d in docs if d.get("kind") == "ConfigMap"]
    if len(cms) != 1:
        bad(f"{path}: expected one ConfigMap, found {len(cms)}")
        return
    n = 0
    for key, text in sorted(cms[0].get("data", {}).items()):
        if not key.endswith((".yaml", ".yml", ".json")):
            continue
        with open(os.path.join(outdir, key), "w") as fh:
            fh.write(text)
        for i, d in enumerate(x for x in yaml.safe_load_all(text) if x):
            where = f"{path} data.{key} document {i}"
            n += 1
            if d.get("kind") not in ROUTE_KINDS:
                bad(f"{where}: kind {d.get('kind')!r} (the waypoint reads {sorted(ROUTE_KINDS)}, ignores the rest)")
            if not d.get("metadata", {}).get("namespace"):
                bad(f"{where}: no metadata.namespace (it would be 'default')")
            if d.get("kind") in ("HTTPRoute", "GRPCRoute"):
                if not str(d.get("apiVersion", "")).startswith(GWAPI):
                    bad(f"{where}: apiVersion {d.get('apiVersion')!r}")
                for p in d.get("spec", {}).get("parentRefs", []):
                    if p.get("kind") != "Service" or p.get("group", "") != "":
                        bad(f"{where}: parentRef {p} is not a Service (a waypoint takes Service parents only)")
    if n == 0:
        bad(f"{path}: no route files in the ConfigMap")
    print(n)


def split(src, dst):
    docs = [d for _, d in load([src])]
    rest = [d for d in docs if not str(d.get("apiVersion", "")).startswith(GWAPI)]
    with open(dst, "w") as fh:
        yaml.safe_dump_all(rest, fh, sort_keys=False)
    print(len(docs) - len(rest), len(rest))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"split": lambda: split(*args), "manual": lambda: manual(args), "managed": lambda: managed(args),
     "routes": lambda: routes(*args)}[cmd]()
    for p in problems:
        print(p, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
