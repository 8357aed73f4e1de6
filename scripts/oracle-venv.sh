#!/usr/bin/env bash
# Creates (once) and prints the path of the Python venv that holds the real dstack and
# gpuhunt used as test oracles and peers, plus moto (a local EC2 emulator for the AWS backend
# tests). Idempotent and safe to call concurrently.
#   usage: PY=$(bash scripts/oracle-venv.sh)/bin/python
set -euo pipefail
VENV="${DSTACK_ORACLE_VENV:-$HOME/.cache/dstack-sdk/oracle-venv}"
STAMP_WANT="dstack[server]==0.22.5 gpuhunt==0.1.34 pytest==8.* pyyaml"
# Installed after the stamped set and checked on its own, so that a venv stamped by an older
# copy of this script is completed in place instead of being rebuilt.
EXTRA_WANT="moto[server]==5.2.*"
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if [ ! -f "$VENV/.stamp" ] || [ "$(cat "$VENV/.stamp")" != "$STAMP_WANT" ]; then
  echo "oracle-venv: installing $STAMP_WANT into $VENV (one time, ~1-2 min)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check $STAMP_WANT >&2
  echo "$STAMP_WANT" > "$VENV/.stamp"
fi
if [ ! -f "$VENV/.stamp-extra" ] || [ "$(cat "$VENV/.stamp-extra")" != "$EXTRA_WANT" ] \
   || [ ! -x "$VENV/bin/moto_server" ]; then
  echo "oracle-venv: installing $EXTRA_WANT into $VENV (one time, ~30 s)" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check "$EXTRA_WANT" >&2
  echo "$EXTRA_WANT" > "$VENV/.stamp-extra"
fi
echo "$VENV"
