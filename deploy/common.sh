# Shared settings and helpers of the deploy scripts; sourced, never run.
# The defaults live here once, so that kafka.sh, postgres.sh and `stack.sh env`
# can never disagree about a port or a database name.
# shellcheck shell=bash disable=SC2034 # The sourcing scripts use these names.

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$DEPLOY_DIR/.." && pwd)
STACK_DIR=${FOCUS_STACK_DIR:-$REPO_DIR/.stack}
# Paths end up in config files and in processes that run from other working
# directories, so a relative state root is made absolute once, here.
if [[ $STACK_DIR != /* ]]; then
    STACK_DIR=$PWD/$STACK_DIR
fi

KAFKA_PORT=${KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-19093}
PG_PORT=${PG_PORT:-15432}
PG_DB=${PG_DB:-focus_ledger}

# Every service binds to loopback only: nothing here is meant to be reachable
# from another host.
readonly STACK_HOST=127.0.0.1

say() {
    printf '%s: %s\n' "$SERVICE_NAME" "$*"
}

die() {
    printf '%s: error: %s\n' "$SERVICE_NAME" "$*" >&2
    exit 1
}

# A port is checked before it reaches a config file, since a typo would
# otherwise surface as an obscure startup failure in a log.
require_port() {
    local name=$1 value=$2
    if [[ ! $value =~ ^[0-9]{1,5}$ ]] || ((value < 1024 || value > 65535)); then
        die "$name must be a port number in 1024..65535, got '$value'"
    fi
}

# True when something accepts TCP connections on the port. Bash's /dev/tcp
# needs no extra tool, and `timeout` bounds a connect that hangs.
port_open() {
    local port=$1
    timeout 2 bash -c "exec 3<>/dev/tcp/$STACK_HOST/$port" 2>/dev/null
}

# Prints elapsed seconds with one decimal since the given start in
# nanoseconds, so that every script reports its timings the same way.
elapsed_s() {
    local start_ns=$1 now_ns
    now_ns=$(date +%s%N)
    printf '%d.%d' $(((now_ns - start_ns) / 1000000000)) \
        $(((now_ns - start_ns) / 100000000 % 10))
}

kafka_bootstrap() {
    printf '%s:%s' "$STACK_HOST" "$KAFKA_PORT"
}

database_url() {
    printf 'postgresql+asyncpg://postgres@%s:%s/%s' "$STACK_HOST" "$PG_PORT" "$PG_DB"
}

# Installs Debian packages only when the caller opted in; otherwise it says
# the command, because installing system packages behind a developer's back
# is not a start script's call.
install_or_explain() {
    local what=$1
    shift
    if [[ ${FOCUS_STACK_INSTALL:-0} != 1 ]]; then
        die "$what is missing; install it with: apt-get install -y $*" \
            "(or rerun with FOCUS_STACK_INSTALL=1)"
    fi
    if ((EUID != 0)); then
        die "$what is missing and installing it needs root: apt-get install -y $*"
    fi
    say "installing $* (FOCUS_STACK_INSTALL=1)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}
