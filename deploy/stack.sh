#!/usr/bin/env bash
# Starts, stops and inspects the whole local stack (Kafka and PostgreSQL)
# that focus-ledger's integration and end-to-end tests run against.
#
# Usage: deploy/stack.sh start|stop|status|env
#   env prints export lines for the application and the tests:
#       eval "$(deploy/stack.sh env)"
# Settings are the environment variables of deploy/kafka.sh and
# deploy/postgres.sh.
set -euo pipefail

SERVICE_NAME=stack
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

cmd_start() {
    local start_ns
    start_ns=$(date +%s%N)
    # PostgreSQL first: it is ready in about a second, so a broken database
    # setup fails the run before the slower broker start.
    "$DEPLOY_DIR/postgres.sh" start
    "$DEPLOY_DIR/kafka.sh" start
    say "up in $(elapsed_s "$start_ns") s"
}

# Both are stopped even when the first stop fails, so that a half-broken
# stack does not leave the other service running; the exit code still says
# that something went wrong.
cmd_stop() {
    local failed=0
    "$DEPLOY_DIR/kafka.sh" stop || failed=1
    "$DEPLOY_DIR/postgres.sh" stop || failed=1
    return "$failed"
}

cmd_status() {
    local stopped=0
    "$DEPLOY_DIR/kafka.sh" status || stopped=1
    "$DEPLOY_DIR/postgres.sh" status || stopped=1
    return "$stopped"
}

cmd_env() {
    require_port KAFKA_PORT "$KAFKA_PORT"
    require_port PG_PORT "$PG_PORT"
    printf 'export KAFKA_BOOTSTRAP_SERVERS=%q\n' "$(kafka_bootstrap)"
    printf 'export DATABASE_URL=%q\n' "$(database_url)"
}

main() {
    case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *)
        printf 'usage: %s start|stop|status|env\n' "$0" >&2
        exit 2
        ;;
    esac
}

main "$@"
