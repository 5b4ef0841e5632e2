# One image for every stanzad service; the command picks the service:
#   docker run IMAGE connection-manager | router | presence | roster | muc | admin | stanzad user add ...
# Build: docker build -t stanzad:dev .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
# the s3 extra: boto3 for the upload service's S3-compatible storage
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[s3]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STANZAD_LOG_FORMAT=json \
    STANZAD_HTTP_HOST=0.0.0.0 \
    STANZAD_HTTP_PORT=9100 \
    STANZAD_C2S_HOST=0.0.0.0 \
    STANZAD_S2S_HOST=0.0.0.0 \
    STANZAD_TLS_CERT=/var/lib/stanzad/tls/cert.pem \
    STANZAD_TLS_KEY=/var/lib/stanzad/tls/key.pem
RUN groupadd --system --gid 10001 stanzad \
 && useradd --system --uid 10001 --gid stanzad --home-dir /var/lib/stanzad --create-home \
    --shell /usr/sbin/nologin stanzad \
 && install -d -o stanzad -g stanzad -m 0700 /var/lib/stanzad/tls
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY --chmod=0755 ops/docker/entrypoint.sh /usr/local/bin/stanzad-entrypoint
USER 10001:10001
WORKDIR /var/lib/stanzad
# 5222 c2s (STARTTLS), 5269 s2s, 5347 components, 5281 HTTP upload, 9100 side port
# (/metrics /healthz /readyz), 9190 admin API
EXPOSE 5222 5269 5281 5347 9100 9190
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["stanzad-entrypoint", "healthcheck"]
ENTRYPOINT ["stanzad-entrypoint"]
CMD ["connection-manager"]
