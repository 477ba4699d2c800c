#!/usr/bin/env bash
# Build and run the compose stack for real, then exercise it through the load balancer:
#   bash deploy/compose-test.sh            # host-network stack (machines without a bridge network)
# Needs Docker (on a machine with no registry or bridge network: sudo bash deploy/docker-setup.sh). Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
COMPOSE="docker-compose -f deploy/docker-compose.hostnet.yml -p peephole"
$COMPOSE up -d --build
trap '$COMPOSE logs --tail=20 peephole-1 peephole-2 >&2 || true; $COMPOSE down -v' EXIT
python deploy/compose_check.py --url http://127.0.0.1:8080 --grpc 127.0.0.1:8081 \
  --kill-cmd "docker kill peephole_peephole-1_1" \
  --start-cmd "docker start peephole_peephole-1_1" \
  --redis-restart-cmd "docker restart peephole_redis_1"
docker image ls peephole:latest --format 'image peephole:latest {{.Size}}'
