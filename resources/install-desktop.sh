#!/usr/bin/env bash
# Make Vireo launchable from the desktop's app menu (per-user, no root): installs the icon into the hicolor theme
# and a copy of vireo.desktop whose Exec points at this checkout's ./vireo launcher.
set -euo pipefail
here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
repo="$(dirname "$here")"
data="${XDG_DATA_HOME:-$HOME/.local/share}"
install -Dm644 "$here/vireo.svg" "$data/icons/hicolor/scalable/apps/vireo.svg"
mkdir -p "$data/applications"
sed -e "s|^Exec=vireo|Exec=\"$repo/vireo\"|" -e "s|^TryExec=vireo|TryExec=$repo/vireo|" \
    "$here/vireo.desktop" > "$data/applications/vireo.desktop"
command -v desktop-file-validate >/dev/null && desktop-file-validate "$data/applications/vireo.desktop"
command -v update-desktop-database >/dev/null && update-desktop-database -q "$data/applications" || true
command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q -t "$data/icons/hicolor" || true
echo "installed $data/applications/vireo.desktop"
