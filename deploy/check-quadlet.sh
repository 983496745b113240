#!/usr/bin/env bash
# Checks deploy/forgejo-mcp-broker.container where the installed podman has no Quadlet generator (before 4.4): takes
# the generator out of a newer Debian podman package, unpacked in a temporary directory (nothing is installed),
# converts the unit as systemd would at daemon-reload, and has systemd-analyze verify the service it makes.
#
#   deploy/check-quadlet.sh      (from the checkout's root; needs Debian's mirror, which SUITE must be on)
#
# Both tools warn rather than fail (an unsupported key, a value systemd cannot parse): any output fails the check.
set -euo pipefail

SUITE="${SUITE:-trixie}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/in" "$work/out"
echo "deb $MIRROR $SUITE main" > "$work/sources.list"
apt=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=/dev/null -o APT::Sandbox::User=root
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
apt-get "${apt[@]}" update -qq
(cd "$work" && apt-get "${apt[@]}" download -qq "podman/$SUITE" 2>/dev/null)
dpkg -x "$work"/podman_*.deb "$work/podman"
quadlet="$work/podman/usr/libexec/podman/quadlet"
echo "quadlet $("$quadlet" -version) from podman/$SUITE"

cp deploy/forgejo-mcp-broker.container "$work/in/"
QUADLET_UNIT_DIRS="$work/in" "$quadlet" -v "$work/out" > "$work/quadlet.log" 2>&1
service="$work/out/forgejo-mcp-broker.service"
systemd-analyze verify "$service" > "$work/verify.log" 2>&1
grep '^ExecStart=' "$service"
if [ -s "$work/quadlet.log" ] || [ -s "$work/verify.log" ]; then
  cat "$work/quadlet.log" "$work/verify.log"
  echo "FAIL: see the warnings above"
  exit 1
fi
echo "ok: the generator converts the unit without a warning, and systemd-analyze verify has none for its service"
