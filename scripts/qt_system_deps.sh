#!/bin/sh
# The system libraries PyQt6 needs to run napari under a virtual X server (Xvfb), installed
# only when missing, on Debian/Ubuntu (apt). Called by `make setup`; a no-op where they exist,
# on other systems (it says what to install) and when neither root nor sudo is available.
set -eu
PKGS="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxcb-image0 libxcb-randr0
libxcb-render-util0 libxcb-shape0 libxcb-xkb1 libxkbcommon-x11-0 libgl1 libegl1 libgl1-mesa-dri
libglib2.0-0 libfontconfig1 libdbus-1-3"
if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    command -v Xvfb >/dev/null 2>&1 || echo "note: install Xvfb and Qt's xcb libraries for the plugin tests"
    exit 0
fi
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "note: the plugin tests need these system packages:$missing (apt-get install them as root)"
    exit 0
fi
echo "installing system packages for Qt under Xvfb:$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
