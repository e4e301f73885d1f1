#!/bin/sh
# What the tests need from Debian: redis-server (the shared session store's tests start
# their own on a free loopback port) and curl (the demo's printed commands are run as
# printed). Idempotent; uses sudo only when not root.
set -eu
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
  echo "system-deps: need root or sudo to install:$missing" >&2; exit 1
fi
echo "system-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null
# The package may start a system-wide server on 6379; the tests never use it.
