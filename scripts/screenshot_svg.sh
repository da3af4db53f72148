#!/usr/bin/env bash
# Renders an SVG (e.g. kvq-eval --plot output) to a PNG with headless Chromium, to show
# that the file opens in a browser (issue 7, acceptance 3). tests/cli/svg_screenshot.sh
# runs it on a fresh --plot and checks the PNG's pixels.
#
#   scripts/screenshot_svg.sh FILE.svg [OUT.png] [WIDTHxHEIGHT]
#
# Chromium (Debian 12 package `chromium`) is installed with apt-get when it is missing and
# this runs as root (as scripts/deps.sh does), unless KVQ_NO_INSTALL=1. Exit codes: 0 the
# PNG was written (its path is printed), 1 Chromium failed, 2 usage error, 77 no Chromium
# and none installed (ctest reads 77 as "skipped").
set -euo pipefail

svg=${1:-}
[[ -n $svg ]] || { echo "usage: screenshot_svg.sh FILE.svg [OUT.png] [WIDTHxHEIGHT]" >&2; exit 2; }
png=${2:-${svg%.svg}.png}
size=${3:-800x520}
[[ -f $svg ]] || { echo "screenshot_svg: error: $svg: no such file" >&2; exit 2; }
[[ $size =~ ^[0-9]+x[0-9]+$ ]] || { echo "screenshot_svg: error: size '$size' is not WIDTHxHEIGHT" >&2; exit 2; }

find_browser() { command -v chromium || command -v chromium-browser || command -v google-chrome || true; }
browser=$(find_browser)
if [[ -z $browser ]]; then
  if [[ ${KVQ_NO_INSTALL:-0} != 1 && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "screenshot_svg: installing chromium (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null || true
    browser=$(find_browser)
  fi
  if [[ -z $browser ]]; then
    echo "screenshot_svg: no chromium (apt-get install chromium as root, or unset KVQ_NO_INSTALL): skipped" >&2
    exit 77
  fi
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
abs_svg=$(readlink -f "$svg")
abs_png=$(readlink -m "$png")
rm -f "$abs_png"
# --no-sandbox: Chromium refuses to run as root with its sandbox; the page is our own file.
# The flags after it keep a headless run from reaching the network or writing a profile
# outside the temporary folder.
set +e
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --disable-background-networking \
  --no-first-run --disable-component-update --disable-sync --user-data-dir="$profile" \
  --window-size="${size/x/,}" --screenshot="$abs_png" "file://$abs_svg" >"$profile/log" 2>&1
rc=$?
set -e
if [[ $rc -ne 0 || ! -s $abs_png ]]; then
  echo "screenshot_svg: error: chromium (exit $rc) wrote no $abs_png; its last lines:" >&2
  tail -5 "$profile/log" >&2
  exit 1
fi
echo "$abs_png"
