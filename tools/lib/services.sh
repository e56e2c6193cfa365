# Shared by tools/run-tests and tools/demo: make sure the machine's services are up.
# Only 127.0.0.1 is ever contacted.

port_open() { python3 -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('127.0.0.1', int(sys.argv[1]))))" "$1"; }

ensure_rabbitmq() {
  if port_open 5672; then return 0; fi
  if ! command -v rabbitmq-server >/dev/null; then
    echo "[services] installing RabbitMQ from apt"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  echo "[services] starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 120); do port_open 5672 && { sleep 2; return 0; }; sleep 1; done
  echo "[services] RabbitMQ did not come up on 127.0.0.1:5672" >&2; return 1
}

ensure_postgresql() {
  if port_open 5432; then return 0; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "[services] installing PostgreSQL from apt"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  echo "[services] starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
  for _ in $(seq 1 60); do port_open 5432 && return 0; sleep 1; done
  echo "[services] PostgreSQL did not come up on 127.0.0.1:5432" >&2; return 1
}

ensure_prometheus_binary() { # the integration suite runs its own Prometheus on loopback
  if command -v prometheus >/dev/null; then return 0; fi
  echo "[services] installing Prometheus from apt (its binary only is used)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
    >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
  # where systemd runs, the package starts a system-wide Prometheus: not ours to run
  if [[ -d /run/systemd/system ]]; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
}
