#!/usr/bin/env bash
# Install the Vireo service as a systemd user unit for this checkout (per-user, no root): writes
# ~/.config/systemd/user/vireo.service from resources/vireo.service with this checkout's path, then enables and
# starts it, so the service (and the VMs marked autostart) start at every login. Undo with:
#   systemctl --user disable --now vireo.service && rm ~/.config/systemd/user/vireo.service
set -euo pipefail
here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
repo="$(dirname "$here")"
[[ -x "$repo/.venv/bin/python" ]] || { echo "install-service: run $repo/vireo once first (it creates .venv)" >&2; exit 2; }
case "$repo" in *[[:space:]%]*) echo "install-service: $repo: a path with spaces or % cannot go into a unit" >&2; exit 2;; esac
units="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
mkdir -p "$units"
sed "s|@REPO@|$repo|g" "$here/vireo.service" > "$units/vireo.service.tmp"
mv "$units/vireo.service.tmp" "$units/vireo.service"
command -v systemd-analyze >/dev/null && systemd-analyze --user verify "$units/vireo.service" || true
systemctl --user daemon-reload
systemctl --user enable --now vireo.service
echo "installed and started $units/vireo.service"
