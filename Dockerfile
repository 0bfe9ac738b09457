# samtykke-gateway sidecar image.
#
#   docker build -t samtykke-gateway .
#   docker run -p 8080:8080 -v $PWD/gateway.toml:/etc/samtykke-gateway/gateway.toml:ro samtykke-gateway
#
# Config:  mounted at /etc/samtykke-gateway/gateway.toml (a Kubernetes ConfigMap/Secret volume);
#          relative paths in it (revocation_file, rights-package value lists) resolve against
#          /etc/samtykke-gateway/. Reload after changing it: kill -HUP 1 (or restart the pod).
# Data:    /var/lib/samtykke-gateway (volume, owned by uid 10001): the SQLite disclosure log.
# Probes:  GET /healthz (liveness), GET /readyz (readiness), GET /metrics (Prometheus) on 8080.
# Logs:    JSON lines on stderr (SAMTYKKE_GATEWAY_LOG_LEVEL, default INFO).
# tests/sidecar/test_serve.py runs this file's ENTRYPOINT + CMD and HEALTHCHECK command outside Docker.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/samtykke-gateway
COPY pyproject.toml README.md ./
COPY samtykke_gateway ./samtykke_gateway
RUN pip install '.[postgres,redis,fast]' \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin samtykke \
    && mkdir -p /etc/samtykke-gateway \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/samtykke-gateway \
    && rm -rf /opt/samtykke-gateway/samtykke_gateway

USER 10001
# The SQLite disclosure log (config/skatteetaten-tt02.toml: sqlite:////var/lib/samtykke-gateway/
# disclosures.db) must outlive the container: mount a persistent volume here.
VOLUME ["/var/lib/samtykke-gateway"]
EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["samtykke-gateway"]
CMD ["serve", "--config", "/etc/samtykke-gateway/gateway.toml", "--host", "0.0.0.0", "--port", "8080"]
