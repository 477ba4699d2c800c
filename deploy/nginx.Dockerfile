# nginx from Debian's package: the one address in front of the Peephole replicas.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends nginx-light curl \
 && rm -rf /var/lib/apt/lists/* && rm -f /etc/nginx/sites-enabled/default
ARG NGINX_CONF=deploy/nginx.conf
COPY ${NGINX_CONF} /etc/nginx/conf.d/peephole.conf
HEALTHCHECK --interval=5s --timeout=2s --retries=10 CMD curl -fsS http://127.0.0.1:${LB_PORT:-8080}/health/ready || exit 1
CMD ["nginx", "-g", "daemon off;"]
