# Redis from Debian's package, so the stack builds where no image registry is reachable.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=2s --retries=10 CMD redis-cli -p "${REDIS_PORT:-6379}" ping | grep -q PONG
CMD ["sh", "-c", "exec redis-server --bind 0.0.0.0 --port ${REDIS_PORT:-6379} --protected-mode no --appendonly yes --appendfsync everysec --dir /data"]
