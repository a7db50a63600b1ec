#!/usr/bin/env bash
# Runs a real single-node Apache Kafka broker (KRaft: broker and controller in one JVM) on
# 127.0.0.1 for development and the integration tests. No Docker: the jars come from Maven
# Central through mvn and are cached; helper files live in scripts/kafka/.
#
# Usage: scripts/kafka.sh start|stop|status
#
# Environment, all optional:
#   KAFKA_VERSION          Kafka release to run (default pinned below)
#   KAFKA_PORT             client listener port (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener port (default KAFKA_PORT + 1)
#   KAFKA_SASL_PORT        also listen here with SASL_PLAINTEXT, mechanism PLAIN (default: off)
#   KAFKA_SASL_USERS       that listener's users, "NAME:PASSWORD NAME:PASSWORD ..." (written to
#                          server.properties, which is then readable by its owner only)
#   KAFKA_DATA_DIR         data, config, broker.log, kafka.pid (default run/kafka-$KAFKA_PORT)
#   KAFKA_CACHE_DIR        the jar folder (default .cache/kafka/$KAFKA_VERSION/libs)
#   KAFKA_START_TIMEOUT    seconds `start` waits for the broker to answer (default 90)
#   KAFKA_STOP_TIMEOUT     seconds `stop` waits after SIGTERM before SIGKILL (default 30)
#   KAFKA_HEAP_OPTS        broker heap (default "-Xmx512m -Xms256m")
#   KAFKA_OPTS             extra JVM options for the broker
#   JAVA                   java binary (default $JAVA_HOME/bin/java, else java on PATH)
#
# Exit status: 0 ok, 1 failure, 2 usage error; `status` exits 3 when the broker is not running.
# Progress goes to stderr; the one-line result of each command goes to stdout.
set -euo pipefail

PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELPER_DIR="$PROJECT_ROOT/scripts/kafka"

# 4.4.0 is listed on Maven Central but published without signatures and without kafka-tools,
# so the pin is the newest complete, signed 4.x release.
KAFKA_VERSION="${KAFKA_VERSION:-4.3.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
KAFKA_OPTS="${KAFKA_OPTS:-}"
KAFKA_CACHE_DIR="${KAFKA_CACHE_DIR:-$PROJECT_ROOT/.cache/kafka/$KAFKA_VERSION/libs}"
if [ -n "${JAVA_HOME:-}" ] && [ -z "${JAVA:-}" ]; then JAVA="$JAVA_HOME/bin/java"; fi
JAVA="${JAVA:-java}"

progress() { echo "kafka: $*" >&2; }
die() {
    echo "kafka: $*" >&2
    exit 1
}
usage() {
    echo "usage: scripts/kafka.sh start|stop|status (settings via KAFKA_* variables, see the script header)" >&2
    exit 2
}

for setting in KAFKA_PORT KAFKA_START_TIMEOUT KAFKA_STOP_TIMEOUT; do
    [[ "${!setting}" =~ ^[0-9]+$ ]] || {
        echo "kafka: $setting must be a whole number, got '${!setting}'" >&2
        usage
    }
done
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
[[ "$KAFKA_CONTROLLER_PORT" =~ ^[0-9]+$ ]] || die "KAFKA_CONTROLLER_PORT must be a port number, got '$KAFKA_CONTROLLER_PORT'"
[ "$KAFKA_CONTROLLER_PORT" != "$KAFKA_PORT" ] || die "KAFKA_CONTROLLER_PORT must differ from KAFKA_PORT ($KAFKA_PORT)"

# Absolute, because the path is written into server.properties and matched against the
# broker's command line to recognise our own process.
KAFKA_SASL_PORT="${KAFKA_SASL_PORT:-}"
KAFKA_SASL_USERS="${KAFKA_SASL_USERS:-}"
if [ -n "$KAFKA_SASL_PORT" ]; then
    [[ "$KAFKA_SASL_PORT" =~ ^[0-9]+$ ]] || die "KAFKA_SASL_PORT must be a port number, got '$KAFKA_SASL_PORT'"
    [ -n "$KAFKA_SASL_USERS" ] || die "KAFKA_SASL_PORT needs KAFKA_SASL_USERS (\"NAME:PASSWORD ...\")"
    # The JAAS line quotes the password: no quotes, backslashes or semicolons in it.
    user_pattern='^[A-Za-z0-9_.-]+:[^"\;]+$'
    for user in $KAFKA_SASL_USERS; do
        [[ "$user" =~ $user_pattern ]] || die "KAFKA_SASL_USERS: '${user%%:*}' must be NAME:PASSWORD (password without quotes, backslashes or ';')"
    done
fi
KAFKA_DATA_DIR="${KAFKA_DATA_DIR:-$PROJECT_ROOT/run/kafka-$KAFKA_PORT}"
case "$KAFKA_DATA_DIR" in /*) ;; *) KAFKA_DATA_DIR="$PWD/$KAFKA_DATA_DIR" ;; esac
CONFIG_FILE="$KAFKA_DATA_DIR/server.properties"
PID_FILE="$KAFKA_DATA_DIR/kafka.pid"
LOG_FILE="$KAFKA_DATA_DIR/broker.log"
CLUSTER_ID_FILE="$KAFKA_DATA_DIR/cluster.id"
LOCK_FILE="$KAFKA_DATA_DIR/.lock"
LOG_DIR="$KAFKA_DATA_DIR/data"

# Short-lived tool JVMs (format, probe): small heap and C1 only, because their cost is almost
# all JVM start-up and they compete with the broker and tests for 2 cores.
TOOL_JVM_OPTS=(-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1
    "-Dlog4j2.configurationFile=$HELPER_DIR/tools-log4j2.properties")

STAGING_DIR=""
cleanup() { if [ -n "$STAGING_DIR" ]; then rm -rf "$STAGING_DIR"; fi; }
trap cleanup EXIT

# True when the process exists and is not a zombie: a broker reparented to a PID 1 that never
# reaps would otherwise look alive forever after it exited.
is_alive() {
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat="${stat##*) }"
    [ "${stat%% *}" != "Z" ]
}

# Prints the pid of the broker serving this data dir, or fails. The pid file alone is not
# trusted: after a crash or reboot its pid may belong to some other process.
broker_pid() {
    local pid cmdline
    [ -f "$PID_FILE" ] || return 1
    pid="$(<"$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] && is_alive "$pid" || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *"kafka.Kafka $CONFIG_FILE"* ]] || return 1
    echo "$pid"
}

# The client port the running broker was started with (the environment may say otherwise).
configured_port() {
    sed -n 's|^advertised\.listeners=PLAINTEXT://127\.0\.0\.1:\([0-9]*\)\(,.*\)\{0,1\}$|\1|p' "$CONFIG_FILE" 2>/dev/null || true
}

# A plain TCP connect; costs nothing, unlike a JVM.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Serialises start/stop on one data dir, so two test sessions starting the same broker do not
# both launch it. The broker itself must not inherit the lock (see launch_broker).
lock_data_dir() {
    mkdir -p "$KAFKA_DATA_DIR"
    exec {DATA_LOCK_FD}>"$LOCK_FILE"
    flock -w "$((KAFKA_START_TIMEOUT + KAFKA_STOP_TIMEOUT))" "$DATA_LOCK_FD" ||
        die "another kafka.sh is still busy with $KAFKA_DATA_DIR"
}

fetch_jars() {
    local marker="$KAFKA_CACHE_DIR/kafka_2.13-$KAFKA_VERSION.jar" fetch_lock_fd
    [ -f "$marker" ] && return 0
    command -v mvn >/dev/null || die "mvn not found; install Maven 3 (e.g. apt-get install maven), it fetches Kafka's jars"
    mkdir -p "$(dirname "$KAFKA_CACHE_DIR")"
    # Brokers on other ports may be fetching the same version at this moment.
    exec {fetch_lock_fd}>"$KAFKA_CACHE_DIR.lock"
    flock "$fetch_lock_fd"
    if [ ! -f "$marker" ]; then
        progress "downloading Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_CACHE_DIR (first start only)"
        STAGING_DIR="$(mktemp -d "$KAFKA_CACHE_DIR.tmp.XXXXXX")"
        cp "$HELPER_DIR/pom.xml" "$STAGING_DIR/pom.xml"
        # Into a staging folder, renamed when complete: an interrupted download leaves no
        # half-filled cache that later starts would trust.
        if ! mvn -B -q --strict-checksums -f "$STAGING_DIR/pom.xml" \
            -Dkafka.version="$KAFKA_VERSION" \
            dependency:copy-dependencies -DincludeScope=runtime \
            -DoutputDirectory="$STAGING_DIR/libs" >"$STAGING_DIR/mvn.log" 2>&1; then
            tail -n 30 "$STAGING_DIR/mvn.log" >&2
            die "could not download Kafka $KAFKA_VERSION with Maven (is the version on Maven Central?)"
        fi
        [ -f "$STAGING_DIR/libs/kafka_2.13-$KAFKA_VERSION.jar" ] || die "Maven finished but kafka_2.13-$KAFKA_VERSION.jar is missing"
        rm -rf "$KAFKA_CACHE_DIR"
        mv "$STAGING_DIR/libs" "$KAFKA_CACHE_DIR"
        rm -rf "$STAGING_DIR"
        STAGING_DIR=""
        progress "cached $(find "$KAFKA_CACHE_DIR" -name '*.jar' | wc -l) jars"
    fi
    exec {fetch_lock_fd}>&-
}

# Rewritten on every start so port changes take effect; the data itself is kept.
write_config() {
    local template sasl_listener="" sasl_settings="" jaas user
    template="$(<"$HELPER_DIR/server.properties.in")"
    if [ -n "$KAFKA_SASL_PORT" ]; then
        sasl_listener=",SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT"
        jaas="org.apache.kafka.common.security.plain.PlainLoginModule required"
        for user in $KAFKA_SASL_USERS; do jaas+=" user_${user%%:*}=\"${user#*:}\""; done
        sasl_settings="listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=$jaas;"
    fi
    # Quoted replacements: bash 5.2 would otherwise treat '&' in a path as the matched text.
    template="${template//@PORT@/"$KAFKA_PORT"}"
    template="${template//@CONTROLLER_PORT@/"$KAFKA_CONTROLLER_PORT"}"
    template="${template//@LOG_DIR@/"$LOG_DIR"}"
    template="${template//@SASL_LISTENER@/"$sasl_listener"}"
    template="${template//@SASL_SETTINGS@/"$sasl_settings"}"
    # Owner-only: it may hold the SASL users' passwords.
    (umask 077 && printf '%s\n' "$template" >"$CONFIG_FILE")
    chmod 600 "$CONFIG_FILE"
}

# Kafka's Uuid format (16 random bytes, base64url, no padding), made here rather than with
# `kafka-storage random-uuid` to save a JVM start. Kafka never issues ids starting with '-'.
new_cluster_id() {
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" == -* ]] || break
    done
    echo "$id"
}

# Formats only a fresh data dir: formatting again would wipe the topics a restart must keep.
format_storage() {
    local cluster_id output
    [ -f "$LOG_DIR/meta.properties" ] && return 0
    if [ -s "$CLUSTER_ID_FILE" ]; then
        cluster_id="$(<"$CLUSTER_ID_FILE")"
    else
        cluster_id="$(new_cluster_id)"
        echo "$cluster_id" >"$CLUSTER_ID_FILE"
    fi
    progress "formatting $LOG_DIR (cluster id $cluster_id)"
    if ! output="$("$JAVA" "${TOOL_JVM_OPTS[@]}" -cp "$KAFKA_CACHE_DIR/*" kafka.tools.StorageTool \
        format --cluster-id "$cluster_id" --config "$CONFIG_FILE" 2>&1)"; then
        echo "$output" >&2
        die "formatting $LOG_DIR failed"
    fi
}

# Kafka's own tool sends Metadata, then ApiVersions, and keeps asking until the broker lists
# itself; a KRaft broker serves requests only once it has caught up and been unfenced.
broker_answers() {
    local port="$1" limit="$2" output
    output="$(timeout "$limit" "$JAVA" "${TOOL_JVM_OPTS[@]}" -cp "$KAFKA_CACHE_DIR/*" \
        org.apache.kafka.tools.BrokerApiVersionsCommand \
        --bootstrap-server "127.0.0.1:$port" 2>&1)" || return 1
    [[ "$output" == *"(id: "*"-> ("* ]]
}

# Waits until the broker answers; on failure sets FAIL_REASON and returns 1.
wait_until_answers() {
    local pid="$1" port="$2" deadline=$((SECONDS + KAFKA_START_TIMEOUT)) remaining
    progress "waiting for the broker on 127.0.0.1:$port to answer (up to ${KAFKA_START_TIMEOUT}s)"
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ! is_alive "$pid"; then
            FAIL_REASON="the broker process (pid $pid) exited"
            return 1
        fi
        # The JVM probe costs a second or two of CPU, so only try it once the port accepts.
        if port_open "$port"; then
            remaining=$((deadline - SECONDS))
            if broker_answers "$port" "$((remaining > 5 ? remaining : 5))"; then return 0; fi
        fi
        sleep 0.5
    done
    FAIL_REASON="no answer from 127.0.0.1:$port within ${KAFKA_START_TIMEOUT}s"
    return 1
}

launch_broker() {
    local heap_opts extra_opts
    read -r -a heap_opts <<<"$KAFKA_HEAP_OPTS"
    read -r -a extra_opts <<<"$KAFKA_OPTS"
    LOG_START_LINE=1
    if [ -f "$LOG_FILE" ]; then LOG_START_LINE=$(($(wc -l <"$LOG_FILE") + 1)); fi
    printf '\n=== %s kafka.sh start: Kafka %s on 127.0.0.1:%s ===\n' \
        "$(date '+%Y-%m-%d %H:%M:%S')" "$KAFKA_VERSION" "$KAFKA_PORT" >>"$LOG_FILE"
    # setsid: its own session, so a Ctrl-C or hang-up aimed at whoever ran `start` does not
    # reach the broker; only `stop` ends it. GC flags are those of Kafka's kafka-run-class.sh.
    setsid "$JAVA" "${heap_opts[@]}" \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        "-Dlog4j2.configurationFile=$HELPER_DIR/log4j2.properties" \
        "${extra_opts[@]}" \
        -cp "$KAFKA_CACHE_DIR/*" kafka.Kafka "$CONFIG_FILE" \
        </dev/null >>"$LOG_FILE" 2>&1 {DATA_LOCK_FD}>&- &
    echo "$!" >"$PID_FILE"
}

# The cause of a failed start is usually an ERROR line and its exception early on, followed
# by dozens of shutdown lines; so show the first errors of this attempt and then its tail.
report_start_failure() {
    local this_run errors
    this_run="$(tail -n +"$LOG_START_LINE" "$LOG_FILE")"
    errors="$(grep -m 8 -E '^\[[^]]*\] (ERROR|FATAL) |^(Caused by: )?[[:alnum:]_.$]+(Exception|Error): ' <<<"$this_run" || true)"
    {
        echo "kafka: start failed: $FAIL_REASON"
        if [ -n "$errors" ]; then
            echo "kafka: first errors in $LOG_FILE:"
            echo "$errors"
        fi
        echo "kafka: last lines of $LOG_FILE:"
        tail -n 30 <<<"$this_run"
    } >&2
}

stop_pid() {
    local pid="$1" deadline
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + KAFKA_STOP_TIMEOUT))
    while is_alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    if is_alive "$pid"; then
        progress "broker (pid $pid) still running after ${KAFKA_STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while is_alive "$pid"; do sleep 0.1; done
    fi
}

cmd_start() {
    local pid port
    lock_data_dir
    if pid="$(broker_pid)"; then
        port="$(configured_port)"
        progress "broker for $KAFKA_DATA_DIR already running (pid $pid)"
        wait_until_answers "$pid" "$port" || die "broker (pid $pid) runs but does not answer: $FAIL_REASON"
        echo "kafka: broker up at 127.0.0.1:$port (pid $pid)"
        return 0
    fi
    rm -f "$PID_FILE"
    for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" $KAFKA_SASL_PORT; do
        if port_open "$port"; then
            die "127.0.0.1:$port is already in use by another process; choose other ports with KAFKA_PORT / KAFKA_CONTROLLER_PORT / KAFKA_SASL_PORT or stop what holds it"
        fi
    done
    fetch_jars
    write_config
    format_storage
    progress "starting broker (log: $LOG_FILE)"
    launch_broker
    pid="$(<"$PID_FILE")"
    if ! wait_until_answers "$pid" "$KAFKA_PORT"; then
        report_start_failure
        # Leave nothing half-started behind for the next start to trip over.
        if is_alive "$pid"; then stop_pid "$pid"; fi
        rm -f "$PID_FILE"
        exit 1
    fi
    echo "kafka: broker up at 127.0.0.1:$KAFKA_PORT${KAFKA_SASL_PORT:+ (SASL_PLAINTEXT on 127.0.0.1:$KAFKA_SASL_PORT)} (pid $pid)"
}

cmd_stop() {
    local pid
    if [ ! -d "$KAFKA_DATA_DIR" ]; then
        echo "kafka: broker not running ($KAFKA_DATA_DIR does not exist)"
        return 0
    fi
    lock_data_dir
    if ! pid="$(broker_pid)"; then
        rm -f "$PID_FILE"
        echo "kafka: broker not running ($KAFKA_DATA_DIR)"
        return 0
    fi
    progress "stopping broker (pid $pid)"
    stop_pid "$pid"
    rm -f "$PID_FILE"
    echo "kafka: broker stopped (pid $pid)"
}

cmd_status() {
    local pid
    if pid="$(broker_pid)"; then
        echo "kafka: broker running at 127.0.0.1:$(configured_port) (pid $pid, data $KAFKA_DATA_DIR)"
        exit 0
    fi
    echo "kafka: broker not running (data $KAFKA_DATA_DIR)"
    exit 3
}

[ "$#" -eq 1 ] || usage
case "$1" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*) usage ;;
esac
