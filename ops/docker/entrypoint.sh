#!/bin/sh
# stanzad container entry point: the first argument picks the service.
#   connection-manager | router | presence | roster | muc | pubsub | s2s-gateway | upload | admin
#                                        run that service (exec: it is PID 1 and gets SIGTERM)
#   healthcheck                          GET /healthz on the side port (Docker HEALTHCHECK)
#   stanzad ARGS...                      the admin CLI; anything else is executed as given
set -eu

# Every client connection is a file descriptor: lift the soft limit to the hard limit the
# runtime grants (compose sets it with `ulimits`, Kubernetes inherits it from the node's
# container runtime). The services do the same at start; this also covers the CLI.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

case "${1:-}" in
  connection-manager) shift; exec python -m services.connection_manager "$@" ;;
  router) shift; exec python -m services.router "$@" ;;
  presence) shift; exec python -m services.presence "$@" ;;
  roster) shift; exec python -m services.roster "$@" ;;
  muc) shift; exec python -m services.muc "$@" ;;
  pubsub) shift; exec python -m services.pubsub "$@" ;;
  s2s-gateway) shift; exec python -m services.s2s_gateway "$@" ;;
  upload) shift; exec python -m services.upload "$@" ;;
  admin) shift; exec python -m services.admin "$@" ;;
  healthcheck)
    exec python -c 'import os, sys, urllib.request
port = os.environ.get("STANZAD_HTTP_PORT", "9100")
try:
    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
except Exception as exc:
    sys.exit(f"unhealthy: {exc}")' ;;
  "") echo "usage: connection-manager | router | presence | roster | muc | pubsub | s2s-gateway | upload | admin | healthcheck | stanzad ARGS" >&2; exit 64 ;;
  *) exec "$@" ;;
esac
