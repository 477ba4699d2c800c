#!/usr/bin/env bash
# Peephole vs TorchServe, KServe, BentoML and LitServe (each by its own scripts) and the bare
# ASGI ceiling, the same wrk cases in one run (see bench/peers.py):
#   bench/peers.sh DIR [options]     DIR: the peers' harnesses (or PEERS_DIR=DIR bench/peers.sh)
exec "${PYTHON:-python}" "$(dirname "$0")/peers.py" "$@"
