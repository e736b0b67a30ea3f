#!/usr/bin/env bash
# Runs the test suite against the repository's own Kafka and PostgreSQL:
# starts the stack when it is not running (and stops it again afterwards),
# exports its addresses, and runs pytest with any arguments given.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=0
if ! deploy/stack.sh status >/dev/null 2>&1; then
    deploy/stack.sh start
    started=1
fi
# A stack this script started is stopped however the tests end.
cleanup() {
    if ((started)); then
        deploy/stack.sh stop
    fi
}
trap cleanup EXIT

eval "$(deploy/stack.sh env)"
.venv/bin/python -m pytest "$@"
