#!/usr/bin/env bash
# Build a pinned Consul release from the Go module proxy and cache the binary.
#
# No Consul binary is packaged for this platform, so the tests and the local
# multi-process mode use one built here with the machine's Go toolchain.
#
#   scripts/build_consul.sh          # prints the path of the cached binary
#
# stdout carries ONLY the binary path (callers capture it); progress goes to stderr.
# Idempotent: when the cached binary exists and reports the pinned version, it
# does nothing. Concurrent runs serialise on a lock file in the cache.
#
# Environment:
#   MESH_CACHE_DIR   cache root (default ~/.cache/triton-mesh); the binary lands in
#                    $MESH_CACHE_DIR/consul/<version>/consul, the Go module and build
#                    caches in $MESH_CACHE_DIR/consul/go so reruns are fast.
#   GOPROXY, GOSUMDB honoured as usual.
set -euo pipefail

# Consul 1.17.0 and every release published after HashiCorp's August 2023 licence
# change (including 1.16.5+/1.15.10+ patch releases) ship under the Business Source
# License. v1.16.3 is the newest release the module proxy serves whose LICENSE is
# MPL-2.0 (checked in the module zip; v1.16.4 and v1.16.5 are not served, v1.16.6 is
# BUSL-1.1). The script re-checks the licence before building.
CONSUL_VERSION="1.16.3"
# Git commit and time of the v1.16.3 tag (from the proxy's .info), stamped into
# `consul version` as a release build would.
CONSUL_COMMIT="1123b47f3a7e43a763d2cf9e37f0f3eea7a0b18a"
CONSUL_DATE="2023-10-31T14:28:19Z"
# Consul's go.mod replaces its nested modules with ./api, ./sdk, ...; those
# directories are not in the parent's module zip, so require the published
# versions the v1.16.3 go.mod itself names (all MPL-2.0).
SUBMODULES=(
  "github.com/hashicorp/consul/api@v1.25.1"
  "github.com/hashicorp/consul/envoyextensions@v0.4.1"
  "github.com/hashicorp/consul/proto-public@v0.4.1"
  "github.com/hashicorp/consul/sdk@v0.14.1"
  "github.com/hashicorp/consul/troubleshoot@v0.3.1"
)

log() { printf 'build_consul: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

CACHE_ROOT="${MESH_CACHE_DIR:-$HOME/.cache/triton-mesh}/consul"
OUT_DIR="$CACHE_ROOT/$CONSUL_VERSION"
BIN="$OUT_DIR/consul"

have_binary() {
  local out
  [[ -x "$BIN" ]] || return 1
  out=$("$BIN" version 2>/dev/null) || return 1
  [[ "${out%%$'\n'*}" == "Consul v$CONSUL_VERSION" ]]
}

if have_binary; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "no 'go' on PATH; install Go >= 1.20 to build Consul"
mkdir -p "$OUT_DIR"

# One build at a time (parallel test sessions may all ask for the binary).
exec 9>"$CACHE_ROOT/.build.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi
if have_binary; then  # someone else built it while we waited
  echo "$BIN"
  exit 0
fi

export GOPATH="$CACHE_ROOT/go"
export GOMODCACHE="$GOPATH/pkg/mod"
export GOCACHE="$CACHE_ROOT/go/build-cache"
export GOFLAGS="-mod=mod"
export GOTOOLCHAIN=local
export CGO_ENABLED=0
# The nested modules' hashes are absent from Consul's go.sum (they were replaced
# by local directories); fetch them from the proxy without a checksum-database
# lookup, which is often unreachable on build hosts. Every other dependency is
# still verified against the go.sum shipped in the release.
# (The pattern is a path prefix: it covers the parent module and its nested ones.)
export GONOSUMDB="${GONOSUMDB:+$GONOSUMDB,}github.com/hashicorp/consul"

start=$(date +%s)
log "go $(go env GOVERSION); fetching github.com/hashicorp/consul@v$CONSUL_VERSION"
SRC=$(GOFLAGS= \
  go mod download -json "github.com/hashicorp/consul@v$CONSUL_VERSION" \
  | sed -n 's/^[[:space:]]*"Dir":[[:space:]]*"\(.*\)",\{0,1\}$/\1/p')
[[ -n "$SRC" && -f "$SRC/go.mod" ]] || die "go mod download gave no source directory for consul@v$CONSUL_VERSION"

head -n 5 "$SRC/LICENSE" | grep -q "Mozilla Public License, version 2.0" \
  || die "consul@v$CONSUL_VERSION is not MPL-2.0 licensed ($SRC/LICENSE); refusing to build"

WORK="$CACHE_ROOT/src-$CONSUL_VERSION"
rm -rf "$WORK"
cp -r "$SRC" "$WORK"
chmod -R u+w "$WORK"
cd "$WORK"

edit_args=()
for mv in "${SUBMODULES[@]}"; do
  edit_args+=("-dropreplace=${mv%@*}" "-require=$mv")
done
go mod edit "${edit_args[@]}"
if grep -q '=> \./' go.mod; then
  die "go.mod still has local replace directives: $(grep '=> \./' go.mod | tr -s ' \t' ' ')"
fi

log "building (CGO_ENABLED=0); the first build takes several minutes"
tmp_bin="$OUT_DIR/.consul.$$"
go build -trimpath -o "$tmp_bin" \
  -ldflags "-s -w -X github.com/hashicorp/consul/version.GitCommit=${CONSUL_COMMIT:0:8} \
            -X github.com/hashicorp/consul/version.BuildDate=$CONSUL_DATE" \
  . >&2 || { rm -f "$tmp_bin"; die "go build failed in $WORK"; }
mv -f "$tmp_bin" "$BIN"
cd "$CACHE_ROOT" && rm -rf "$WORK"  # the module cache keeps the pristine source

have_binary || die "built $BIN but '$BIN version' does not report v$CONSUL_VERSION: $("$BIN" version 2>&1 | head -n1)"
log "built Consul v$CONSUL_VERSION in $(( $(date +%s) - start ))s"
echo "$BIN"
