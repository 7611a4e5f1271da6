#!/usr/bin/env bash
# CI: the system packages the GUI tests need (Debian/Ubuntu).
#
# The napari widget tests run with QT_QPA_PLATFORM=offscreen and need nothing extra. The rendering
# test (tests/test_gui_render.py) starts an X server with `xvfb-run` and draws with Qt's xcb
# platform and software OpenGL (Mesa); for that it needs Xvfb, xauth (used by xvfb-run), the xcb
# libraries Qt's xcb plugin loads, and Mesa's GL. Packages already installed are not reinstalled;
# with all of them present the script changes nothing and needs no network.
#
# Usage: .ci/gui-deps.sh            (as root, or with sudo available)
set -euo pipefail

packages=(
    xvfb xauth
    libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0
    libxkbcommon-x11-0 libxcb-image0 libxcb-render-util0 libxcb-randr0 libxcb-shape0
    libxcb-xfixes0 libxcb-xkb1 libfontconfig1 libdbus-1-3
    libgl1 libegl1 libgl1-mesa-dri
)

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    if command -v xvfb-run >/dev/null 2>&1; then
        echo "gui-deps: not a Debian system, but xvfb-run is present; nothing to do"
        exit 0
    fi
    echo "gui-deps: no apt-get here; install Xvfb (xvfb-run), xauth and Qt's xcb libraries by hand" >&2
    exit 1
fi

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "gui-deps: all ${#packages[@]} packages present"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    else
        echo "gui-deps: missing ${missing[*]} and not root (no sudo)" >&2
        exit 1
    fi
fi
echo "gui-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
command -v xvfb-run >/dev/null
echo "gui-deps: done"
