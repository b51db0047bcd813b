#!/usr/bin/env bash
# Builds the pinned e2e test binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd, kwok, helm; crane and promrules for packaging)
# from the Go modules pinned in go.mod/go.sum, extra/go.mod/extra/go.sum and
# packaging/go.mod/packaging/go.sum, into a content-addressed cache outside the repo:
#
#   ${LOTABOTS_CACHE:-$HOME/.cache/lotabots}/testbins/<key>/bin/<binary>
#   ${LOTABOTS_CACHE:-$HOME/.cache/lotabots}/testbins/<key>/kwok-stages.yaml
#
# <key> = first 16 hex of sha256 over (go.mod, go.sum, extra/go.mod,
# extra/go.sum, packaging/go.mod, packaging/go.sum, packaging/promrules/main.go,
# build.sh). Warm run: builds nothing, prints only the path.
# Progress goes to stderr; the last (only) line on stdout is the cache dir, so
#   dir=$(e2e/testbins/build.sh | tail -1)
# works. Binaries are built to a temp name and renamed on success.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

key_files=(go.mod go.sum extra/go.mod extra/go.sum packaging/go.mod packaging/go.sum
           packaging/promrules/main.go build.sh)
key="$(sha256sum "${key_files[@]}" | sha256sum | cut -c1-16)"
cache_root="${LOTABOTS_CACHE:-$HOME/.cache/lotabots}"
out="$cache_root/testbins/$key"
bin="$out/bin"

# name  module-dir  package
targets=(
  "kube-apiserver          .      k8s.io/kubernetes/cmd/kube-apiserver"
  "kube-controller-manager .      k8s.io/kubernetes/cmd/kube-controller-manager"
  "kube-scheduler          .      k8s.io/kubernetes/cmd/kube-scheduler"
  "kubectl                 .      k8s.io/kubernetes/cmd/kubectl"
  "etcd                    .      go.etcd.io/etcd/server/v3"
  "kwok                    extra  sigs.k8s.io/kwok/cmd/kwok"
  "helm                    extra  helm.sh/helm/v3/cmd/helm"
  "crane                   packaging  github.com/google/go-containerregistry/cmd/crane"
  "promrules               packaging  ./promrules"
)

# Fast path: everything present -> no go invocation at all.
missing=()
for t in "${targets[@]}"; do
  read -r name _ _ <<<"$t"
  [[ -x "$bin/$name" ]] || missing+=("$t")
done
if [[ ${#missing[@]} -eq 0 && -s "$out/kwok-stages.yaml" ]]; then
  echo "$out"
  exit 0
fi

export GOWORK=off CGO_ENABLED=0
mkdir -p "$bin"
tmp_files=()
cleanup() { [[ ${#tmp_files[@]} -eq 0 ]] || rm -f "${tmp_files[@]}"; }
trap cleanup EXIT

modver() { (cd "$1" && go list -m -f '{{.Version}}' "$2"); }

ldflags_for() {
  local name="$1" dir="$2" v major minor
  case "$name" in
    kube-*|kubectl)
      v="$(modver "$dir" k8s.io/kubernetes)"             # v1.36.3
      major="${v#v}"; major="${major%%.*}"
      minor="${v#v*.}"; minor="${minor%%.*}"
      local f=""
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        f+=" -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.gitCommit="
      done
      echo "-s -w$f" ;;
    helm)
      v="$(modver "$dir" helm.sh/helm/v3)"               # v3.21.4
      # As helm's Makefile: default chart Capabilities.KubeVersion from client-go.
      local cg; cg="$(modver "$dir" k8s.io/client-go)"    # v0.36.x -> 1.36
      major=$(( ${cg:1:1} + 1 )); minor="${cg#v*.}"; minor="${minor%%.*}"
      echo "-s -w -X helm.sh/helm/v3/internal/version.version=$v -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
           "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$major -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
           "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$major -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor" ;;
    kwok)
      v="$(modver "$dir" sigs.k8s.io/kwok)"              # v0.8.0
      echo "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$v" ;;
    *)
      echo "-s -w" ;;
  esac
}

total_start=$(date +%s)
for t in "${missing[@]}"; do
  read -r name dir pkg <<<"$t"
  printf 'building %s... ' "$name" >&2
  start=$(date +%s)
  tmp="$bin/.$name.tmp.$$"
  tmp_files+=("$tmp")
  flags="$(ldflags_for "$name" "$dir")"
  (cd "$dir" && go build -trimpath -ldflags "$flags" -o "$tmp" "$pkg")
  mv -f "$tmp" "$bin/$name"
  echo "$(( $(date +%s) - start ))s" >&2
done

if [[ ! -s "$out/kwok-stages.yaml" ]]; then
  kwok_dir="$(cd extra && go mod download -json "sigs.k8s.io/kwok@$(modver . sigs.k8s.io/kwok)" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$kwok_dir" ]] || { echo "kwok module source not found" >&2; exit 1; }
  tmp="$out/.kwok-stages.yaml.tmp.$$"
  tmp_files+=("$tmp")
  : >"$tmp"
  for stage in node/fast node/heartbeat pod/fast; do
    sdir="$kwok_dir/kustomize/stage/$stage"
    # resources of the kustomization, in order
    for f in $(awk '/^resources:/{r=1;next} r&&/^- /{print $2;next} r&&/^[^ -]/{r=0}' "$sdir/kustomization.yaml"); do
      { echo '---'; echo "# kwok $stage/$f"; cat "$sdir/$f"; } >>"$tmp"
    done
  done
  mv -f "$tmp" "$out/kwok-stages.yaml"
fi

[[ ${#missing[@]} -eq 0 ]] || echo "built ${#missing[@]} binaries in $(( $(date +%s) - total_start ))s" >&2
echo "$out"
