#!/usr/bin/env bash
# Refreshes the console's third-party files in ui/vendor/ from the npm
# registry (`npm pack`, no install, no build step of its own): uPlot's
# prebuilt browser bundle, its stylesheet and its license. The files are
# committed; the binary embeds them (src/server/ui.rs), so neither a build
# nor the console needs network access.
#
# Usage: ui/vendor.sh [UPLOT_VERSION]      (default: the version below)
set -euo pipefail

UPLOT_VERSION=${1:-1.6.32}
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null)
tar -xzf "$work/uplot-$UPLOT_VERSION.tgz" -C "$work"
dist=$work/package/dist
cp "$dist/uPlot.iife.min.js" vendor/uPlot.iife.min.js
cp "$dist/uPlot.min.css" vendor/uPlot.min.css
cp "$work/package/LICENSE" vendor/uPlot.LICENSE
head -c 60 vendor/uPlot.iife.min.js | grep -q "v$UPLOT_VERSION" || {
    echo "error: vendor/uPlot.iife.min.js does not say v$UPLOT_VERSION" >&2
    exit 1
}
echo "ui/vendor: uPlot $UPLOT_VERSION"
