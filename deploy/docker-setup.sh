#!/usr/bin/env bash
# Make a Debian machine able to build and run the Peephole image with no image registry.
#
#   sudo bash deploy/docker-setup.sh
#
# For closed networks (a CI box, an air-gapped host) where only Debian's and PyPI's package
# mirrors answer. Idempotent; needs root. It
#   1. installs Debian's docker.io, docker-compose and debootstrap;
#   2. starts dockerd if it is not running, without its bridge network (many sandboxes and
#      CI runners cannot create one): every build and run then uses the host's network
#      (`docker build --network host`, `docker run --network host`, and
#      deploy/docker-compose.hostnet.yml for the compose stack);
#   3. builds the base image debian:bookworm-slim locally (debootstrap + docker import)
#      when no registry can provide it, trusting the same extra CA certificates as the host
#      (/usr/local/share/ca-certificates), as behind a TLS-inspecting proxy.
# Where Docker already runs with a registry, none of this is needed.
set -euo pipefail

if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null \
   || ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  nohup dockerd --bridge=none --iptables=false --ip-masq=false >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start: see /var/log/dockerd.log" >&2; exit 1; }
fi

if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1 \
   && ! docker pull debian:bookworm-slim >/dev/null 2>&1; then
  root=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
  tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
  rm -rf "$root"
fi
echo "docker $(docker version --format '{{.Server.Version}}') ready; base image debian:bookworm-slim present"
echo "build and run with --network host; the compose stack: deploy/docker-compose.hostnet.yml"
