#!/usr/bin/env bash
# Starts, stops and inspects a private PostgreSQL cluster for development and
# tests, from Debian's server binaries and without Docker. It listens on
# 127.0.0.1 only and trusts every local connection, so it is no model of a
# production database: it exists so that integration tests run on the real
# engine.
#
# Usage: deploy/postgres.sh start|stop|status|logs [-f]
#
# Environment (defaults in deploy/common.sh):
#   FOCUS_STACK_DIR      state root, default <repo>/.stack
#   PG_BIN               server binaries, default /usr/lib/postgresql/15/bin
#   PG_PORT              TCP port, default 15432
#   PG_DB                database created on start, default focus_ledger
#   PG_START_TIMEOUT_S   bound on pg_ctl start, default 30
#   PG_STOP_TIMEOUT_S    bound on pg_ctl stop, default 30
#   FOCUS_STACK_INSTALL=1  install postgresql-15 with apt-get when missing
set -euo pipefail

SERVICE_NAME=postgres
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
STATE_DIR=$STACK_DIR/postgres
DATA_DIR=$STATE_DIR/data
SOCKET_DIR=$STATE_DIR/run
LOG_DIR=$STATE_DIR/logs
LOG_FILE=$LOG_DIR/postgres.log
# The settings file is included from postgresql.conf and rewritten on every
# start, so that a changed port takes effect without a new cluster.
SETTINGS_FILE_NAME=focus-ledger.conf

START_TIMEOUT_S=${PG_START_TIMEOUT_S:-30}
STOP_TIMEOUT_S=${PG_STOP_TIMEOUT_S:-30}
# pg_ctl appends to its log for the life of the cluster; one rotation at start
# keeps it to two files of about this size on a long-lived dev box.
LOG_ROTATE_BYTES=$((10 * 1024 * 1024))
LOG_TAIL_LINES=60

# PostgreSQL refuses to run as root, so as root the server runs as the system
# user postgres; any other user runs it directly.
if ((EUID == 0)); then
    RUN_AS_POSTGRES=1
else
    RUN_AS_POSTGRES=0
fi

# Runs a server binary as the user that owns the cluster. The working
# directory moves to the state dir, which that user can read, so that no
# binary complains about a cwd it cannot enter (such as /root).
as_owner() {
    if ((RUN_AS_POSTGRES)); then
        (cd "$STATE_DIR" && runuser -u postgres -- "$@")
    else
        (cd "$STATE_DIR" && "$@")
    fi
}

require_binaries() {
    local binary
    if [[ ! -x $PG_BIN/pg_ctl ]]; then
        install_or_explain "PostgreSQL 15 (no $PG_BIN/pg_ctl)" postgresql-15
    fi
    for binary in initdb pg_ctl postgres psql createdb; do
        [[ -x $PG_BIN/$binary ]] || die "$PG_BIN/$binary is missing"
    done
}

# Debian's postgresql-common creates the user; a machine without that package
# but with binaries elsewhere (PG_BIN) may not have it.
ensure_postgres_user() {
    ((RUN_AS_POSTGRES)) || return 0
    if ! id postgres >/dev/null 2>&1; then
        say "creating system user postgres"
        useradd --system --user-group --no-create-home \
            --home-dir "$STATE_DIR" --shell /usr/sbin/nologin postgres
    fi
}

prepare_dirs() {
    mkdir -p "$STATE_DIR" "$SOCKET_DIR" "$LOG_DIR"
    if ((RUN_AS_POSTGRES)); then
        chown postgres:postgres "$STATE_DIR" "$SOCKET_DIR" "$LOG_DIR"
        # Every parent of the state dir must be searchable by postgres; a
        # state dir under a private home fails here with a plain message
        # instead of an initdb error about permissions.
        if ! runuser -u postgres -- test -w "$STATE_DIR"; then
            die "user postgres cannot write $STATE_DIR;" \
                "set FOCUS_STACK_DIR to a directory it can reach"
        fi
    fi
    if [[ -f $LOG_FILE ]] && (($(stat -c %s "$LOG_FILE") > LOG_ROTATE_BYTES)); then
        mv -f "$LOG_FILE" "$LOG_FILE.1"
    fi
}

# The cluster is created once; its data survives stop and start.
init_cluster_once() {
    if [[ -s $DATA_DIR/PG_VERSION ]]; then
        return 0
    fi
    say "creating a cluster in $DATA_DIR"
    # Trust authentication is acceptable only because the server listens on
    # loopback and a unix socket inside the state dir.
    if ! as_owner "$PG_BIN/initdb" -D "$DATA_DIR" -A trust -U postgres \
        -E UTF8 --locale=C --no-instructions >"$LOG_DIR/initdb.log" 2>&1; then
        cat "$LOG_DIR/initdb.log" >&2
        die "initdb failed (output above)"
    fi
    printf "\n# Added by deploy/postgres.sh.\ninclude = '%s'\n" \
        "$SETTINGS_FILE_NAME" >>"$DATA_DIR/postgresql.conf"
}

write_settings() {
    local settings_file=$DATA_DIR/$SETTINGS_FILE_NAME
    cat >"$settings_file" <<EOF
# Written by deploy/postgres.sh on every start; edits here are lost.
port = $PG_PORT
listen_addresses = '$STACK_HOST'
unix_socket_directories = '$SOCKET_DIR'
# Test suites open a pool per worker; the default 100 runs out under xdist.
max_connections = 200
shared_buffers = 512MB
# fsync and synchronous commit stay on: crash tests must see what a real
# server would keep.
fsync = on
synchronous_commit = on
# The ledger writes in large batches: fewer checkpoints mean fewer full-page
# images in the WAL, and compressing those that remain halves their volume.
max_wal_size = 4GB
checkpoint_timeout = 15min
wal_compression = lz4
log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = 1000
EOF
    if ((RUN_AS_POSTGRES)); then
        chown postgres:postgres "$settings_file"
    fi
}

server_pid() {
    as_owner "$PG_BIN/pg_ctl" status -D "$DATA_DIR" >/dev/null 2>&1 || return 1
    head -n 1 "$DATA_DIR/postmaster.pid"
}

psql_admin() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$STACK_HOST" -p "$PG_PORT" \
        -U postgres -d postgres "$@"
}

# A database name reaches SQL, so it is held to plain identifiers; checked
# before the server starts, so that a bad name leaves nothing running.
require_db_name() {
    if [[ ! $PG_DB =~ ^[a-z_][a-z0-9_]{0,62}$ ]]; then
        die "PG_DB must be a lowercase identifier, got '$PG_DB'"
    fi
}

ensure_database() {
    local exists
    exists=$(psql_admin -tA \
        -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")
    if [[ $exists != 1 ]]; then
        "$PG_BIN/createdb" -h "$STACK_HOST" -p "$PG_PORT" -U postgres "$PG_DB"
        say "created database $PG_DB"
    fi
}

print_log_tail() {
    if [[ -s $LOG_FILE ]]; then
        printf -- '--- last %d lines of %s ---\n' "$LOG_TAIL_LINES" "$LOG_FILE" >&2
        tail -n "$LOG_TAIL_LINES" "$LOG_FILE" >&2
    fi
}

cmd_start() {
    local pid start_ns
    start_ns=$(date +%s%N)
    require_port PG_PORT "$PG_PORT"
    require_db_name
    require_binaries
    if pid=$(server_pid); then
        say "already running (pid $pid, $STACK_HOST:$PG_PORT)"
        ensure_database
        say "DATABASE_URL=$(database_url)"
        return 0
    fi
    # Another server on the port would make the database checks below pass
    # against the wrong cluster.
    if port_open "$PG_PORT"; then
        die "port $PG_PORT on $STACK_HOST is in use by another process"
    fi
    ensure_postgres_user
    prepare_dirs
    init_cluster_once
    write_settings
    if ! as_owner "$PG_BIN/pg_ctl" start -D "$DATA_DIR" -l "$LOG_FILE" \
        -w -t "$START_TIMEOUT_S" >/dev/null; then
        print_log_tail
        die "not ready after ${START_TIMEOUT_S} s (log tail above)"
    fi
    ensure_database
    pid=$(server_pid)
    say "ready at $STACK_HOST:$PG_PORT (pid $pid) in $(elapsed_s "$start_ns") s"
    say "DATABASE_URL=$(database_url)"
}

cmd_stop() {
    local pid start_ns
    start_ns=$(date +%s%N)
    if [[ ! -x $PG_BIN/pg_ctl ]] || ! pid=$(server_pid); then
        say "not running"
        return 0
    fi
    # Fast mode rolls back open transactions and disconnects clients, which
    # is what a test run wants; smart mode would wait for idle pools forever.
    if ! as_owner "$PG_BIN/pg_ctl" stop -D "$DATA_DIR" -m fast -w \
        -t "$STOP_TIMEOUT_S" >/dev/null; then
        say "fast stop did not finish in ${STOP_TIMEOUT_S} s; stopping immediately"
        # Immediate mode skips the shutdown checkpoint; the next start
        # replays the WAL, so no committed data is lost.
        as_owner "$PG_BIN/pg_ctl" stop -D "$DATA_DIR" -m immediate -w \
            -t "$STOP_TIMEOUT_S" >/dev/null
    fi
    say "stopped pid $pid in $(elapsed_s "$start_ns") s"
}

cmd_status() {
    local pid
    if [[ -x $PG_BIN/pg_ctl ]] && pid=$(server_pid); then
        say "running (pid $pid, $STACK_HOST:$PG_PORT, database $PG_DB)"
        return 0
    fi
    say "stopped"
    return 1
}

cmd_logs() {
    [[ -f $LOG_FILE ]] || die "no log yet at $LOG_FILE"
    if [[ ${1:-} == -f ]]; then
        exec tail -n "$LOG_TAIL_LINES" -F "$LOG_FILE"
    fi
    tail -n 200 "$LOG_FILE"
}

main() {
    local command=${1:-}
    shift || true
    case $command in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    *)
        printf 'usage: %s start|stop|status|logs [-f]\n' "$0" >&2
        exit 2
        ;;
    esac
}

main "$@"
