#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages kvq builds with, only those that are missing.
# Needs root (or sudo) when something is missing; prints what it installs.
set -euo pipefail

packages=(cmake ninja-build g++ pkg-config libeigen3-dev libcli11-dev catch2
          nlohmann-json3-dev libsentencepiece-dev zlib1g-dev)
# The fuzz targets (fuzz/, scripts/fuzz.sh) need clang with its libFuzzer runtime.
if [[ "${KVQ_FUZZ:-0}" == 1 ]]; then packages+=(clang libclang-rt-dev libomp-dev); fi
packages+=("$@")

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "kvq: installing ${missing[*]}" >&2
sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
