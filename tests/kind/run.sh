#!/usr/bin/env bash
# The kind end-to-end suite: a real cluster without kube-proxy, Switchyard
# installed by its chart, the shared scenarios checked with real requests.
# Needs docker, kind, helm, kubectl and cargo; cannot run on machines without
# a Docker engine (see README.md). Deletes the cluster whatever happens.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cluster=${KIND_CLUSTER:-switchyard-e2e}
image=switchyard:e2e
say() { printf '\033[1mkind-e2e:\033[0m %s\n' "$*" >&2; }
for tool in docker kind helm kubectl cargo; do
  command -v "$tool" >/dev/null || { say "$tool is required"; exit 2; }
done
trap 'say "deleting cluster $cluster"; kind delete cluster --name "$cluster" >/dev/null 2>&1 || true' EXIT

say "creating cluster $cluster (kubeProxyMode: none)"
kind create cluster --name "$cluster" --config "$here/tests/kind/cluster.yaml" --wait 120s
say "building and loading $image"
docker build -t "$image" "$here"
kind load docker-image "$image" --name "$cluster"

# No kube-proxy: the agent must be told where the API server really is.
apiserver=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$cluster-control-plane")
say "installing the chart (API server at $apiserver:6443)"
helm install switchyard "$here/helm/switchyard" --namespace kube-system \
  --set image.repository=switchyard --set image.tag=e2e --set image.pullPolicy=Never \
  --set interfaces.external=eth0 --set apiServer.host="$apiserver" --set apiServer.port=6443 \
  --wait --timeout 180s
kubectl -n kube-system rollout status ds/switchyard --timeout=180s

say "deploying backends, client and service"
kubectl apply -f "$here/tests/kind/workloads.yaml"
kubectl -n switchyard-e2e rollout status deploy/backend --timeout=180s
kubectl -n switchyard-e2e wait --for=condition=Ready pod/client --timeout=180s

nodes=$(kubectl get nodes -o jsonpath='{range .items[*]}{.status.addresses[?(@.type=="InternalIP")].address}{" "}{end}')
backends=$(kubectl -n switchyard-e2e get pods -l app=backend -o jsonpath='{.items[*].metadata.name}')
say "checking the scenarios (nodes: $nodes; backends: $backends)"
cargo run --quiet --manifest-path "$here/Cargo.toml" -p switchyard-tests --bin kind-check -- \
  --namespace switchyard-e2e --client client --vip 10.96.1.10 \
  --nodes "${nodes// /,}" --backends "${backends// /,}"
kubectl -n kube-system exec ds/switchyard -- switchyard inspect services
say "all scenarios passed"
