# Sourced by the other scripts. Every command builds in one profile
# (release) and one target directory, so RocksDB's C++ is compiled once and
# reused by the demo, the tests, the benchmarks and clippy.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gress-target}"
export CARGO_TERM_PROGRESS_WHEN=never

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: need root to run: $*" >&2
        return 1
    fi
}

# RocksDB's bindings are generated with libclang and its C++ is compiled
# with the system compiler; install them where missing (Debian/Ubuntu).
ensure_system_deps() {
    local missing=()
    command -v g++ >/dev/null 2>&1 || missing+=(g++)
    command -v clang >/dev/null 2>&1 || missing+=(clang)
    # librdkafka (consumer-group offsets) is built by its configure and make.
    command -v make >/dev/null 2>&1 || missing+=(make)
    if ! ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 \
        && ! ldconfig -p 2>/dev/null | grep -q 'libclang\.so '; then
        missing+=(libclang-dev)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} (needed to build RocksDB and librdkafka)" >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# The S3 tests run against moto_server, a real S3 API on loopback, from PyPI.
ensure_moto() {
    if ! command -v moto_server >/dev/null 2>&1; then
        echo "installing moto[server] (S3 test server)" >&2
        python3 -m pip install --quiet 'moto[server]'
        hash -r
    fi
    command -v moto_server >/dev/null 2>&1 || {
        echo "error: moto_server is not on PATH after installing moto[server]" >&2
        return 1
    }
}

# The Kafka tests run against tansu, a Kafka-compatible broker from
# crates.io, with in-memory storage. Its build (about 17 minutes on 2 cores)
# runs in the background, beside the workspace's, into a cache that later
# runs reuse; `wait_tansu` waits for it.
TOOLS="${GRESS_TOOLS:-$HOME/.cache/gress-tools}"
start_tansu() {
    export GRESS_TANSU="$TOOLS/bin/tansu"
    if [ -x "$GRESS_TANSU" ]; then
        TANSU_PID=
        return
    fi
    mkdir -p "$TOOLS"
    echo "building the tansu broker in the background (log: $TOOLS/install.log)" >&2
    cargo install tansu --version 0.6.0 --features dynostore \
        --root "$TOOLS" --target-dir "$TOOLS/target" >"$TOOLS/install.log" 2>&1 &
    TANSU_PID=$!
}
wait_tansu() {
    if [ -n "${TANSU_PID:-}" ] && ! wait "$TANSU_PID"; then
        tail -30 "$TOOLS/install.log" >&2
        echo "error: could not build the tansu broker" >&2
        return 1
    fi
    rm -rf "$TOOLS/target"
}

ensure_nextest() {
    if ! cargo nextest --version >/dev/null 2>&1; then
        echo "installing cargo-nextest" >&2
        cargo install cargo-nextest --locked
    fi
}

# Builds every binary of the workspace. Selecting the whole workspace keeps
# the resolved feature set, and so the RocksDB build, identical to the one
# the tests and clippy use.
build_bins() {
    cargo build --release --workspace --bins
}
