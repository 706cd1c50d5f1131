#!/usr/bin/env bash
# Install switchyard in .venv and run it on examples/quickstart.toml, with a
# small web server for its HTTP route. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q .
.venv/bin/python -m http.server 8080 --bind 127.0.0.1 --directory docs >/dev/null 2>&1 &
web=$!
trap 'kill $web 2>/dev/null' EXIT
cat <<MSG
switchyard listens on 127.0.0.1:8443. Try, from another terminal:
  curl http://127.0.0.1:8443/           (HTTP  -> the docs web server)
  ssh -p 8443 127.0.0.1                 (SSH   -> this machine's sshd, if any)
  curl -k https://127.0.0.1:8443/       (TLS   -> logged, then refused)
  nc 127.0.0.1 8443                     (other -> echoed back)
Every connection ends in one access-log line below.
MSG
.venv/bin/twistd -n --pidfile= switchyard --config examples/quickstart.toml
