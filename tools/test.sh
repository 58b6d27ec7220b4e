#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test, and a short bounded fuzz run.
# Run from anywhere inside the repository, as root. On Debian it installs the system packages
# the tests need; elsewhere it stops and names what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# The disk-full tests (tests/gateway_disk_full.rs) mount small tmpfs filesystems of their own.
if [ "$(id -u)" != 0 ]; then
  echo "error: the tests run as root: the disk-full tests mount small tmpfs filesystems" >&2
  exit 1
fi

needed=()
# A C compiler for the crates with C code (ring, mimalloc); a C++ one for the fuzz run's libFuzzer.
{ command -v cc && command -v c++; } >/dev/null 2>&1 || needed+=(build-essential)
command -v go >/dev/null 2>&1 || needed+=(golang-go)
[ -d /usr/share/gocode/src/golang.org/x/mod ] || needed+=(golang-golang-x-mod-dev)
# The AMQP tests start their own private RabbitMQ broker.
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1 \
  || needed+=(rabbitmq-server)
if [ ${#needed[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "==> installing ${needed[*]}"
    # A fresh image has empty package lists: read them first.
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${needed[@]}" >/dev/null
  else
    echo "error: the tests need the Debian packages: ${needed[*]}" >&2
    exit 1
  fi
fi

# rustfmt and clippy: a minimal rustup profile lacks them.
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
      echo "==> installing the Rust component $component"
      rustup component add "$component"
    else
      echo "error: the tests need the Rust component $component" >&2
      exit 1
    fi
  fi
done

# A CI run builds once from clean: incremental compilation's caches would only add gigabytes.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy (warnings denied)"
cargo clippy --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --locked --lib --bins --tests
cargo test --locked --doc
echo "==> mapping lint and fixtures"
cargo run --locked --quiet -- mapping lint
cargo run --locked --quiet -- mapping test
echo "==> bounded fuzz run"
bash tools/fuzz-smoke.sh
echo "==> all checks passed"
