#!/usr/bin/env bash
# Starts, stops and inspects one local Apache Kafka node for development and
# tests, without Docker: the jars come from Maven Central through
# deploy/kafka/pom.xml and run on the machine's JVM.
#
# The node is a combined KRaft broker and controller on 127.0.0.1 with
# replication factor 1 everywhere, so it loses data with its disk and is no
# model of a production cluster: it exists so that consumer groups,
# rebalances and transactions can be tested for real.
#
# Usage: deploy/kafka.sh start|stop|status|logs [-f]
#        deploy/kafka.sh topics-create NAME PARTITIONS
#        deploy/kafka.sh tool CLASS [ARGS...]   (any Kafka tool class)
#
# Environment (defaults in deploy/common.sh):
#   FOCUS_STACK_DIR          state root, default <repo>/.stack
#   KAFKA_PORT               PLAINTEXT listener, default 19092
#   KAFKA_CONTROLLER_PORT    KRaft controller listener, default 19093
#   KAFKA_START_TIMEOUT_S    readiness wait, default 60
#   KAFKA_STOP_TIMEOUT_S     wait after SIGTERM before SIGKILL, default 30
#   KAFKA_FETCH_TIMEOUT_S    bound on the Maven download, default 900
#   KAFKA_HEAP_OPTS          default -Xms512m -Xmx512m
#   KAFKA_TRANSACTION_VERSION  if set when storage is first formatted, pins
#                            the transaction.version feature (1 = the older
#                            protocol, 2 = KIP-890); later starts ignore it
#   FOCUS_STACK_INSTALL=1    install a missing JDK or Maven with apt-get
set -euo pipefail

SERVICE_NAME=kafka
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

STATE_DIR=$STACK_DIR/kafka
LIB_DIR=$STATE_DIR/lib
DATA_DIR=$STATE_DIR/data
LOG_DIR=$STATE_DIR/logs
PID_FILE=$STATE_DIR/kafka.pid
CONFIG_FILE=$STATE_DIR/server.properties
CLIENT_CONFIG_FILE=$STATE_DIR/tools-client.properties
POM_FILE=$DEPLOY_DIR/kafka/pom.xml
LOG4J_FILE=$DEPLOY_DIR/kafka/log4j2.properties

START_TIMEOUT_S=${KAFKA_START_TIMEOUT_S:-60}
STOP_TIMEOUT_S=${KAFKA_STOP_TIMEOUT_S:-30}
FETCH_TIMEOUT_S=${KAFKA_FETCH_TIMEOUT_S:-900}
HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms512m -Xmx512m}
# One readiness probe must not eat the whole start budget when the broker
# accepts connections but does not answer yet.
PROBE_TIMEOUT_S=20
LOG_TAIL_LINES=60

# A zombie still has a /proc entry; it counts as gone, since a container's
# init may be slow to reap it, or may never reap it.
pid_alive() {
    local pid=$1 stat
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    # The state is the first field after the parenthesised command name.
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# The pid in the pid file is ours only if that process is a Kafka node
# started with our config; a recycled pid must not be signalled.
running_pid() {
    local pid
    [[ -f $PID_FILE ]] || return 1
    pid=$(<"$PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    pid_alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $CONFIG_FILE" ||
        return 1
    printf '%s\n' "$pid"
}

require_java() {
    local spec_version
    if ! command -v java >/dev/null; then
        install_or_explain "Java 17 or later" openjdk-17-jre-headless
    fi
    spec_version=$(java -XshowSettings:properties -version 2>&1 |
        sed -n 's/^ *java\.specification\.version = //p')
    # Kafka 4 brokers need Java 17; an older JVM fails with a class version
    # error that names no requirement.
    if [[ ! $spec_version =~ ^[0-9]+$ ]] || ((spec_version < 17)); then
        die "Kafka 4 needs Java 17 or later; 'java' is version '$spec_version'"
    fi
}

# Runs a Kafka command-line class on the cached jars. Tools get a small heap
# and no log4j config of their own, so they print only errors.
kafka_tool() {
    java -Xmx256m -cp "$LIB_DIR/*" "$@"
}

# Fetches the jars once per version of the pom: the stamp holds the pom's
# checksum, so a version bump in the pom refetches and nothing else does.
fetch_jars() {
    local pom_sum stamp_file=$LIB_DIR/.pom.sha256 work_dir=$STATE_DIR/fetch
    local start_ns
    pom_sum=$(sha256sum "$POM_FILE" | cut -d' ' -f1)
    if [[ -f $stamp_file && $(<"$stamp_file") == "$pom_sum" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || install_or_explain "Maven" maven
    say "fetching Kafka jars with Maven into $LIB_DIR"
    start_ns=$(date +%s%N)
    # Maven runs on a copy of the pom so that it writes nothing into the repo;
    # the lib dir is swapped in whole, so an interrupted fetch leaves no half
    # classpath that a later start would trust.
    rm -rf "$work_dir"
    mkdir -p "$work_dir"
    cp "$POM_FILE" "$work_dir/pom.xml"
    if ! (cd "$work_dir" && timeout "$FETCH_TIMEOUT_S" mvn -B \
        -Dstyle.color=never dependency:copy-dependencies \
        -DoutputDirectory="$work_dir/lib") >"$LOG_DIR/fetch.log" 2>&1; then
        tail -n "$LOG_TAIL_LINES" "$LOG_DIR/fetch.log" >&2
        die "Maven could not fetch the Kafka jars (log tail above," \
            "whole log in $LOG_DIR/fetch.log)"
    fi
    printf '%s\n' "$pom_sum" >"$work_dir/lib/.pom.sha256"
    rm -rf "$LIB_DIR"
    mv "$work_dir/lib" "$LIB_DIR"
    rm -rf "$work_dir"
    say "fetched $(find "$LIB_DIR" -name '*.jar' | wc -l) jars" \
        "in $(elapsed_s "$start_ns") s"
}

# The config is written on every start so that a changed port takes effect;
# the static voter list (not a dynamic quorum) is what allows that, since a
# dynamic quorum records the controller's endpoint in the formatted log.
write_config() {
    local broker_listener=PLAINTEXT://$STACK_HOST:$KAFKA_PORT
    local controller_listener=CONTROLLER://$STACK_HOST:$KAFKA_CONTROLLER_PORT
    cat >"$CONFIG_FILE" <<EOF
# Written by deploy/kafka.sh on every start; edits here are lost.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$STACK_HOST:$KAFKA_CONTROLLER_PORT
listeners=$broker_listener,$controller_listener
advertised.listeners=$broker_listener
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA_DIR

# One node: every internal topic must accept a single replica, or group
# coordination, transactions and share groups never become available.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Fewer internal partitions than the default 50 make the first consumer
# group and the first transaction on a fresh node ready sooner.
offsets.topic.num.partitions=8
transaction.state.log.num.partitions=8

# Tests join and leave groups all the time; the default 3 s delay would be
# added to every first join.
group.initial.rebalance.delay.ms=0

# The application creates its topics with the partition counts it needs; an
# auto-created topic would hide a missing creation step.
auto.create.topics.enable=false
num.partitions=1

# A node that lives for one test session needs no week of retention.
log.retention.hours=24
log.segment.bytes=67108864
EOF
    cat >"$CLIENT_CONFIG_FILE" <<EOF
# Written by deploy/kafka.sh: bounds for the readiness probe's admin client,
# whose defaults would retry for a minute before failing.
request.timeout.ms=5000
default.api.timeout.ms=10000
EOF
}

# Storage is formatted only once: formatting again would create a new
# cluster id and the node would refuse its own data.
format_storage_once() {
    local cluster_id format_args
    if [[ -f $DATA_DIR/meta.properties ]]; then
        return 0
    fi
    mkdir -p "$DATA_DIR"
    cluster_id=$(kafka_tool kafka.tools.StorageTool random-uuid)
    format_args=(format -t "$cluster_id" -c "$CONFIG_FILE")
    if [[ -n ${KAFKA_TRANSACTION_VERSION:-} ]]; then
        format_args+=(--feature "transaction.version=$KAFKA_TRANSACTION_VERSION")
    fi
    say "formatting storage in $DATA_DIR (cluster id $cluster_id)"
    if ! kafka_tool kafka.tools.StorageTool "${format_args[@]}" \
        >"$LOG_DIR/format.log" 2>&1; then
        cat "$LOG_DIR/format.log" >&2
        rm -rf "$DATA_DIR"
        die "formatting the storage failed (output above)"
    fi
    # The feature levels chosen at format time decide which protocols the
    # node speaks, so they are worth one line of the start output.
    say "$(grep -o "transaction.version', featureLevel=[0-9]*" \
        "$LOG_DIR/format.log" | sed "s/', featureLevel=/=/" || true)" \
        "(details in $LOG_DIR/format.log)"
}

print_log_tail() {
    local file
    for file in "$LOG_DIR/stdout.log" "$LOG_DIR/server.log"; do
        if [[ -s $file ]]; then
            printf -- '--- last %d lines of %s ---\n' "$LOG_TAIL_LINES" "$file" >&2
            tail -n "$LOG_TAIL_LINES" "$file" >&2
        fi
    done
}

# Ready means the listener accepts connections and a real metadata request
# through an admin client succeeds, not only that the JVM is alive.
probe_ready() {
    port_open "$KAFKA_PORT" || return 1
    timeout "$PROBE_TIMEOUT_S" java -Xmx128m -cp "$LIB_DIR/*" \
        org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$(kafka_bootstrap)" \
        --command-config "$CLIENT_CONFIG_FILE" --list >/dev/null 2>&1
}

wait_ready() {
    local pid=$1 start_ns=$2 deadline_s=$((SECONDS + START_TIMEOUT_S))
    while ((SECONDS < deadline_s)); do
        if ! pid_alive "$pid"; then
            print_log_tail
            rm -f "$PID_FILE"
            die "the Kafka process exited during startup (log tail above)"
        fi
        if probe_ready; then
            say "ready at $(kafka_bootstrap) (pid $pid)" \
                "in $(elapsed_s "$start_ns") s"
            return 0
        fi
        sleep 1
    done
    print_log_tail
    # A node left running but unready would make the next `start` report
    # success without a readiness check of its own budget; stop it instead.
    stop_pid "$pid"
    die "not ready after ${START_TIMEOUT_S} s; stopped it (log tail above)"
}

cmd_start() {
    local pid start_ns
    start_ns=$(date +%s%N)
    require_port KAFKA_PORT "$KAFKA_PORT"
    require_port KAFKA_CONTROLLER_PORT "$KAFKA_CONTROLLER_PORT"
    if pid=$(running_pid); then
        # Exit 0 must always mean ready, also for a node that another start
        # launched a moment ago and that is still coming up.
        say "already running (pid $pid, bootstrap $(kafka_bootstrap))"
        wait_ready "$pid" "$start_ns"
        return 0
    fi
    # A foreign process on our ports would make the readiness probe talk to
    # it and report success for a broker that never started.
    local port
    for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if port_open "$port"; then
            die "port $port on $STACK_HOST is in use by another process"
        fi
    done
    require_java
    mkdir -p "$STATE_DIR" "$LOG_DIR"
    fetch_jars
    write_config
    format_storage_once

    # setsid detaches the node from the caller's session, so that a Ctrl-C
    # or the end of the calling shell does not take it down; the state dir as
    # working directory keeps it from pinning the caller's directory. The
    # subshell execs, so $! is the JVM's pid.
    (
        cd "$STATE_DIR"
        # shellcheck disable=SC2086 # HEAP_OPTS holds several flags on purpose.
        exec setsid nohup java $HEAP_OPTS \
            -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
            -Djava.awt.headless=true \
            -Dlog4j2.configurationFile="$LOG4J_FILE" \
            -Dkafka.logs.dir="$LOG_DIR" \
            -cp "$LIB_DIR/*" kafka.Kafka "$CONFIG_FILE"
    ) >>"$LOG_DIR/stdout.log" 2>&1 </dev/null &
    pid=$!
    printf '%s\n' "$pid" >"$PID_FILE"
    say "started pid $pid; waiting up to ${START_TIMEOUT_S} s for readiness"
    wait_ready "$pid" "$start_ns"
}

# Stops the node with the given pid, SIGKILL after the bounded wait.
stop_pid() {
    local pid=$1 deadline_s
    # SIGTERM runs Kafka's controlled shutdown, which flushes and closes the
    # logs cleanly, so the next start needs no log recovery.
    kill -TERM "$pid" 2>/dev/null || true
    deadline_s=$((SECONDS + STOP_TIMEOUT_S))
    while pid_alive "$pid" && ((SECONDS < deadline_s)); do
        sleep 0.2
    done
    if pid_alive "$pid"; then
        say "still running after ${STOP_TIMEOUT_S} s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        # A killed process disappears within moments; bound the wait anyway.
        local tries_left=50
        while pid_alive "$pid" && ((tries_left-- > 0)); do
            sleep 0.1
        done
    fi
    rm -f "$PID_FILE"
}

cmd_stop() {
    local pid start_ns
    start_ns=$(date +%s%N)
    if ! pid=$(running_pid); then
        rm -f "$PID_FILE"
        say "not running"
        return 0
    fi
    stop_pid "$pid"
    say "stopped pid $pid in $(elapsed_s "$start_ns") s"
}

cmd_status() {
    local pid
    if pid=$(running_pid); then
        say "running (pid $pid, bootstrap $(kafka_bootstrap))"
        return 0
    fi
    say "stopped"
    return 1
}

cmd_logs() {
    local log_file=$LOG_DIR/server.log
    [[ -f $log_file ]] || die "no log yet at $log_file"
    if [[ ${1:-} == -f ]]; then
        exec tail -n "$LOG_TAIL_LINES" -F "$log_file"
    fi
    tail -n 200 "$log_file"
}

cmd_topics_create() {
    local name=${1:-} partitions=${2:-}
    if [[ -z $name || ! $partitions =~ ^[1-9][0-9]*$ ]]; then
        die "usage: kafka.sh topics-create NAME PARTITIONS"
    fi
    running_pid >/dev/null || die "not running; start it with: deploy/kafka.sh start"
    kafka_tool org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$(kafka_bootstrap)" --create --if-not-exists \
        --topic "$name" --partitions "$partitions" --replication-factor 1
}

cmd_tool() {
    (($# >= 1)) || die "usage: kafka.sh tool CLASS [ARGS...]"
    [[ -f $LIB_DIR/.pom.sha256 ]] || die "no jars yet; run: deploy/kafka.sh start"
    kafka_tool "$@"
}

main() {
    local command=${1:-}
    shift || true
    case $command in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    topics-create) cmd_topics_create "$@" ;;
    tool) cmd_tool "$@" ;;
    *)
        printf 'usage: %s start|stop|status|logs [-f]' "$0" >&2
        printf '|topics-create NAME PARTITIONS|tool CLASS [ARGS...]\n' >&2
        exit 2
        ;;
    esac
}

main "$@"
