#!/bin/sh
# Refresh the admin page's chart library (uPlot) from the version pinned in
# clients/admin/package-lock.json: install it with npm, copy its built ES module, stylesheet and
# licence into the package. To move to another version: change it in clients/admin/package.json,
# run `npm install --ignore-scripts` there (it rewrites the lock), then this script.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here/clients/admin"
npm ci --ignore-scripts --no-audit --no-fund
dest="$here/src/clarion/static/admin/vendor"
mkdir -p "$dest"
cp node_modules/uplot/dist/uPlot.esm.js node_modules/uplot/dist/uPlot.min.css "$dest/"
cp node_modules/uplot/LICENSE "$dest/uPlot.LICENSE"
echo "uPlot $(node -p 'require("./node_modules/uplot/package.json").version') copied to $dest"
