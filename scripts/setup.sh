#!/usr/bin/env bash
# Installs everything Haven's build and tests need on a fresh Debian machine.
# Idempotent: what is already installed is skipped, so a second run takes seconds.
#
#   - Debian packages for the rdkafka build (cmake, libcurl4-openssl-dev, libssl-dev,
#     libsasl2-dev, zlib1g-dev, libzstd-dev), Postgres (postgresql), protoc for the etcd
#     client's build (protobuf-compiler) and etcd 3.4 for failover coordination
#     (etcd-server; its own service is not used: tests start throwaway members), and the
#     failover tests' routes and replication: HAProxy 2.6 (haproxy), the Knot DNS server
#     (knot; kdig from knot-dnsutils checks it independently) and Postgres' wal2json plugin (postgresql-15-wal2json); their services are
#     not used either: tests start their own on free ports; prometheus for promtool;
#     chromium (headless) to open the HTML pages Haven writes as a person would;
#   - the tansu 0.6.0 Kafka-compatible broker (cargo install, ~11 minutes the first time);
#   - the Garage 2.5.0 S3-compatible object server (cargo install, ~10 minutes the first time);
#   - kafka-python 3.0.12 (PyPI, pure Python): the independent Kafka client tests check
#     Haven's output with, in a virtualenv at ~/.cache/haven/venv unless python3 has it.
set -euo pipefail

say() { printf '[setup] %s\n' "$*"; }
t0=$(date +%s)
phase_start=$t0
phase() {
  local now; now=$(date +%s)
  say "$1 ($((now - phase_start)) s)"
  phase_start=$now
}

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# 1. Debian packages -------------------------------------------------------------------
packages=(cmake libcurl4-openssl-dev libssl-dev libsasl2-dev zlib1g-dev libzstd-dev postgresql pkg-config python3 python3-venv protobuf-compiler etcd-server haproxy knot knot-dnsutils postgresql-15-wal2json)
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Prometheus for its promtool (tests check `haven alerts` with `promtool check rules` and
# `promtool test rules`); without recommends (no node exporter), its service is not used.
if ! command -v promtool >/dev/null; then
  say "installing prometheus (for promtool)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# Chromium, headless, for the tests that open Haven's HTML pages as a person would (a
# drill's evidence report shows its verdict).
# ChromeDriver drives it for the dashboard's test (WebDriver: open, wait, read, screenshot).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  say "installing chromium and chromedriver (headless page tests)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
fi
phase "Debian packages ready"

# 2. Cargo-installed servers -----------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"

tansu_ok() { command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -q '0\.6\.0'; }
if ! tansu_ok; then
  say "building tansu 0.6.0 (about 11 minutes the first time)"
  cargo install tansu --version 0.6.0 --features libsql --locked --quiet
fi
tansu_ok || { say "tansu 0.6.0 is not runnable after install"; exit 1; }
phase "tansu ready: $(command -v tansu)"

garage_ok() { command -v garage >/dev/null && garage --version 2>/dev/null | grep -q '2\.5\.0'; }
if ! garage_ok; then
  say "building garage 2.5.0 (about 10 minutes the first time)"
  cargo install garage --version 2.5.0 --locked --no-default-features --features bundled-libs,sqlite --quiet
fi
garage_ok || { say "garage 2.5.0 is not runnable after install"; exit 1; }
phase "garage ready: $(command -v garage)"

# 3. The independent Kafka client --------------------------------------------------------
venv="$HOME/.cache/haven/venv"
kafka_python_ok() { "$1" -c 'import kafka, sys; sys.exit(0 if kafka.__version__.startswith("3.") else 1)' 2>/dev/null; }
if kafka_python_ok python3; then
  phase "kafka-python ready: $(command -v python3)"
else
  if ! kafka_python_ok "$venv/bin/python"; then
    say "installing kafka-python 3.0.12 into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet kafka-python==3.0.12
  fi
  kafka_python_ok "$venv/bin/python" || { say "kafka-python is not importable after install"; exit 1; }
  phase "kafka-python ready: $venv/bin/python"
fi

say "all set in $(( $(date +%s) - t0 )) s"
