#!/usr/bin/env bash
# Renders an SVG (e.g. kvq-eval --plot output) to a PNG with headless Chromium, to check
# that the file opens in a browser (issue 7, acceptance 3). Manual script, not part of
# ctest: it installs Chromium with apt-get when it is missing (needs root and network).
#
#   scripts/screenshot_svg.sh plot.svg [plot.png] [WIDTHxHEIGHT]
set -euo pipefail

svg=${1:?usage: screenshot_svg.sh FILE.svg [OUT.png] [WIDTHxHEIGHT]}
png=${2:-${svg%.svg}.png}
size=${3:-800x520}
[[ -f $svg ]] || { echo "screenshot_svg: error: $svg: no such file" >&2; exit 2; }
[[ $size =~ ^[0-9]+x[0-9]+$ ]] || { echo "screenshot_svg: error: size '$size' is not WIDTHxHEIGHT" >&2; exit 2; }

browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $browser ]]; then
  echo "screenshot_svg: installing chromium (apt-get)" >&2
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  browser=$(command -v chromium)
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
abs_svg=$(readlink -f "$svg")
abs_png=$(readlink -m "$png")
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --no-first-run \
  --disable-component-update --disable-sync --user-data-dir="$profile" \
  --window-size="${size/x/,}" --screenshot="$abs_png" "file://$abs_svg" >/dev/null 2>&1
[[ -s $abs_png ]] || { echo "screenshot_svg: error: chromium wrote no $abs_png" >&2; exit 1; }
echo "$abs_png"
