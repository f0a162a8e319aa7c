#!/usr/bin/env bash
# Re-vendors the console's chart library (uPlot, MIT) from the npm registry into console/vendor/.
# The files are committed and embedded in the binary, so building needs neither npm nor network;
# run this only to move to another uPlot version (change UPLOT_VERSION, run, commit the result).
set -euo pipefail
cd "$(dirname "$0")/.."
UPLOT_VERSION=1.6.32
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null && tar xzf "uplot-$UPLOT_VERSION.tgz")
cp "$work/package/dist/uPlot.iife.min.js" console/vendor/uPlot.iife.min.js
cp "$work/package/dist/uPlot.min.css" console/vendor/uPlot.min.css
cp "$work/package/LICENSE" console/vendor/uPlot.LICENSE
echo "uPlot $UPLOT_VERSION vendored into console/vendor/"
