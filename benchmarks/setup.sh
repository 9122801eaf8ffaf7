#!/usr/bin/env bash
# Installs what clarion's benchmarks need besides the Python venv:
#   - wrk, the HTTP load generator of request_floor.py (Debian package wrk);
#   - nginx + the nchan module (Debian packages nginx-light, libnginx-mod-nchan) -- the system
#     nginx service is not configured or started by the benchmarks; they run their own nginx
#     with its own prefix directory and port;
#   - the Node `ws` package for the reference servers (npm install in benchmarks/refs);
#   - matplotlib into the venv (benchmarks/requirements.txt).
# Usage: bash benchmarks/setup.sh   (as root, for apt-get)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
if [ ! -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || ! command -v nginx >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nginx-light libnginx-mod-nchan
fi
if ! command -v wrk >/dev/null; then
  apt-get install -y -qq wrk || { apt-get update -qq && apt-get install -y -qq wrk; }
fi
if ! command -v node >/dev/null; then
  apt-get install -y -qq nodejs npm
fi
if [ ! -d "$here/refs/node_modules/ws" ]; then
  (cd "$here/refs" && npm install --no-audit --no-fund)
fi
py="${PYTHON:-$repo/.venv/bin/python}"
"$py" -m pip install -q -r "$here/requirements.txt"
