#!/usr/bin/env bash
# Runs a real Apache Kafka broker (KRaft: broker and controller in one JVM) on 127.0.0.1 for
# development and the integration tests, or with KAFKA_NODES=3 a cluster of three such nodes
# (a controller quorum of three, replication factor 3, min.insync.replicas 2). No Docker: the
# jars come from Maven Central through mvn and are cached; helper files live in scripts/kafka/.
#
# Usage: scripts/kafka.sh start|stop|status
#        scripts/kafka.sh kill-node N|start-node N     (N from 1 to KAFKA_NODES)
#
# kill-node sends SIGKILL to node N's JVM (a crash, not a shutdown); start-node starts it again
# on its kept data and waits until it answers. stop and status cover every node.
#
# Environment, all optional:
#   KAFKA_VERSION          Kafka release to run (default pinned below)
#   KAFKA_NODES            1 (default): one broker; 3: a cluster. Once a cluster has been
#                          started in KAFKA_DATA_DIR, commands there default to its node count.
#   KAFKA_PORT             client listener port of node 1 (default 9092); node N listens on
#                          KAFKA_PORT + N - 1
#   KAFKA_CONTROLLER_PORT  KRaft controller listener port of node 1 (default KAFKA_PORT +
#                          KAFKA_NODES, the port after the client ports); node N's is
#                          KAFKA_CONTROLLER_PORT + N - 1. So by default a single broker uses
#                          9092 and 9093, a cluster 9092-9094 (clients) and 9095-9097 (quorum).
#   KAFKA_SASL_PORT        also listen here with SASL_PLAINTEXT, mechanism PLAIN (default: off;
#                          single broker only)
#   KAFKA_SASL_USERS       that listener's users, "NAME:PASSWORD NAME:PASSWORD ..." (written to
#                          server.properties, which is then readable by its owner only)
#   KAFKA_DATA_DIR         data, config, broker.log, kafka.pid (default run/kafka-$KAFKA_PORT);
#                          a cluster keeps cluster.id (one id, shared by all nodes) there and
#                          each node's files in node-N/
#   KAFKA_CACHE_DIR        the jar folder (default .cache/kafka/$KAFKA_VERSION/libs)
#   KAFKA_START_TIMEOUT    seconds `start` waits for the broker to answer (default 90)
#   KAFKA_STOP_TIMEOUT     seconds `stop` waits after SIGTERM before SIGKILL (default 30)
#   KAFKA_HEAP_OPTS        broker heap (default "-Xmx512m -Xms256m"; per node of a cluster
#                          "-Xmx256m -Xms128m")
#   KAFKA_OPTS             extra JVM options for the broker
#   JAVA                   java binary (default $JAVA_HOME/bin/java, else java on PATH)
#
# Exit status: 0 ok, 1 failure, 2 usage error; `status` exits 3 when the broker (every node of a
# cluster) is not running, 4 when only some nodes of a cluster are.
# Progress goes to stderr; the result of each command goes to stdout: one line, and for a
# cluster's status one line per node and a summary line.
set -euo pipefail

PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELPER_DIR="$PROJECT_ROOT/scripts/kafka"

# 4.4.0 is listed on Maven Central but published without signatures and without kafka-tools,
# so the pin is the newest complete, signed 4.x release.
KAFKA_VERSION="${KAFKA_VERSION:-4.3.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
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
    echo "usage: scripts/kafka.sh start|stop|status|kill-node N|start-node N (settings via KAFKA_* variables, see the script header)" >&2
    exit 2
}
# A wrong argument or setting: one line that says what is wanted, exit 2 like usage().
usage_error() {
    echo "kafka: $*" >&2
    exit 2
}

for setting in KAFKA_PORT KAFKA_START_TIMEOUT KAFKA_STOP_TIMEOUT; do
    [[ "${!setting}" =~ ^[0-9]+$ ]] || {
        echo "kafka: $setting must be a whole number, got '${!setting}'" >&2
        usage
    }
done

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
CLUSTER_ID_FILE="$KAFKA_DATA_DIR/cluster.id"
LOCK_FILE="$KAFKA_DATA_DIR/.lock"
# Written when a cluster starts, so that a later `stop` or `status` without KAFKA_NODES still
# covers every node, and a single broker is never started over a cluster's data (or back).
NODES_FILE="$KAFKA_DATA_DIR/nodes"

recorded_nodes=""
if [ -s "$NODES_FILE" ]; then recorded_nodes="$(<"$NODES_FILE")"; fi
KAFKA_NODES="${KAFKA_NODES:-${recorded_nodes:-1}}"
# Two nodes would be a quorum that survives no failure and could never hold 2 in-sync replicas
# of 3; so one broker or a cluster of three.
[[ "$KAFKA_NODES" =~ ^[13]$ ]] || usage_error "KAFKA_NODES must be 1 (a single broker) or 3 (a cluster of three), got '$KAFKA_NODES'"
if [ -n "$recorded_nodes" ] && [ "$recorded_nodes" != "$KAFKA_NODES" ]; then
    die "$KAFKA_DATA_DIR holds a cluster of $recorded_nodes nodes, not KAFKA_NODES=$KAFKA_NODES; unset KAFKA_NODES or choose another KAFKA_DATA_DIR"
fi
if [ "$KAFKA_NODES" -gt 1 ] && [ -z "$recorded_nodes" ] && [ -e "$KAFKA_DATA_DIR/server.properties" ]; then
    die "$KAFKA_DATA_DIR holds a single broker, not a cluster; choose another KAFKA_DATA_DIR for KAFKA_NODES=$KAFKA_NODES"
fi
[ "$KAFKA_NODES" -eq 1 ] || [ -z "$KAFKA_SASL_PORT" ] ||
    die "KAFKA_SASL_PORT is supported on a single broker only (KAFKA_NODES=1)"

KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + KAFKA_NODES))}"
[[ "$KAFKA_CONTROLLER_PORT" =~ ^[0-9]+$ ]] || die "KAFKA_CONTROLLER_PORT must be a port number, got '$KAFKA_CONTROLLER_PORT'"
if [ "$KAFKA_NODES" -eq 1 ]; then
    [ "$KAFKA_CONTROLLER_PORT" != "$KAFKA_PORT" ] || die "KAFKA_CONTROLLER_PORT must differ from KAFKA_PORT ($KAFKA_PORT)"
    KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
else
    # The client ports and the controller ports are two runs of KAFKA_NODES ports each.
    port_gap=$((KAFKA_CONTROLLER_PORT - KAFKA_PORT))
    [ "${port_gap#-}" -ge "$KAFKA_NODES" ] ||
        die "the client ports $KAFKA_PORT-$((KAFKA_PORT + KAFKA_NODES - 1)) and controller ports $KAFKA_CONTROLLER_PORT-$((KAFKA_CONTROLLER_PORT + KAFKA_NODES - 1)) overlap; set KAFKA_CONTROLLER_PORT at least $KAFKA_NODES away from KAFKA_PORT"
    # Three JVMs share the machine with the tests: a quarter of a gigabyte each is plenty for
    # test traffic.
    KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx256m -Xms128m}"
fi
for port in "$((KAFKA_PORT + KAFKA_NODES - 1))" "$((KAFKA_CONTROLLER_PORT + KAFKA_NODES - 1))"; do
    [ "$port" -le 65535 ] || die "port $port is out of range; choose a lower KAFKA_PORT / KAFKA_CONTROLLER_PORT"
done

# Static voters (id@host:port of every controller): the quorum is fixed in each node's config,
# so formatting needs no --initial-controllers and every node is formatted the same way.
VOTERS=""
for ((node = 1; node <= KAFKA_NODES; node++)); do
    VOTERS+="${VOTERS:+,}$node@127.0.0.1:$((KAFKA_CONTROLLER_PORT + node - 1))"
done
# Client bootstrap list of all nodes, for messages.
ALL_BOOTSTRAP=""
for ((node = 1; node <= KAFKA_NODES; node++)); do
    ALL_BOOTSTRAP+="${ALL_BOOTSTRAP:+,}127.0.0.1:$((KAFKA_PORT + node - 1))"
done

# Points the per-node variables at node $1. A single broker keeps its files directly in
# KAFKA_DATA_DIR, exactly where they always were; a cluster node in node-N/.
select_node() {
    NODE_ID="$1"
    if [ "$KAFKA_NODES" -eq 1 ]; then
        NODE_DIR="$KAFKA_DATA_DIR"
        NODE_NAME="broker"
    else
        NODE_DIR="$KAFKA_DATA_DIR/node-$NODE_ID"
        NODE_NAME="node $NODE_ID"
    fi
    NODE_PORT=$((KAFKA_PORT + NODE_ID - 1))
    NODE_CONTROLLER_PORT=$((KAFKA_CONTROLLER_PORT + NODE_ID - 1))
    CONFIG_FILE="$NODE_DIR/server.properties"
    PID_FILE="$NODE_DIR/kafka.pid"
    LOG_FILE="$NODE_DIR/broker.log"
    LOG_DIR="$NODE_DIR/data"
}
select_node 1

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
    local template sasl_listener="" sasl_settings="" cluster_settings="" jaas user
    local replication_factor=1 min_isr=1
    template="$(<"$HELPER_DIR/server.properties.in")"
    if [ "$KAFKA_NODES" -gt 1 ]; then
        replication_factor=3
        min_isr=2
        # A killed node is fenced, and leaves the ISR of its partitions, once its heartbeats
        # stop for this long; Kafka's 9 s default would stall acks=all writes for as long.
        cluster_settings="broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=6000"
    fi
    if [ -n "$KAFKA_SASL_PORT" ]; then
        sasl_listener=",SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT"
        jaas="org.apache.kafka.common.security.plain.PlainLoginModule required"
        for user in $KAFKA_SASL_USERS; do jaas+=" user_${user%%:*}=\"${user#*:}\""; done
        sasl_settings="listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=$jaas;"
    fi
    # Quoted replacements: bash 5.2 would otherwise treat '&' in a path as the matched text.
    template="${template//@NODE_ID@/"$NODE_ID"}"
    template="${template//@VOTERS@/"$VOTERS"}"
    template="${template//@PORT@/"$NODE_PORT"}"
    template="${template//@CONTROLLER_PORT@/"$NODE_CONTROLLER_PORT"}"
    template="${template//@LOG_DIR@/"$LOG_DIR"}"
    template="${template//@REPLICATION_FACTOR@/"$replication_factor"}"
    template="${template//@MIN_ISR@/"$min_isr"}"
    template="${template//@CLUSTER_SETTINGS@/"$cluster_settings"}"
    template="${template//@SASL_LISTENER@/"$sasl_listener"}"
    template="${template//@SASL_SETTINGS@/"$sasl_settings"}"
    mkdir -p "$NODE_DIR"
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
# The cluster id is made once, in KAFKA_DATA_DIR, and every node of a cluster is formatted with it.
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

# Kafka's own tool sends Metadata, then ApiVersions to every broker the metadata lists, and
# prints one "host:port (id: N ...) -> (" line per broker that answered. A KRaft broker is
# listed only once it has caught up and been unfenced, so each node id wanted must be there.
# Sets PROBE_MISSING to the ids that were not.
broker_answers() {
    local bootstrap="$1" limit="$2" output node
    shift 2
    PROBE_MISSING="$*"
    output="$(timeout "$limit" "$JAVA" "${TOOL_JVM_OPTS[@]}" -cp "$KAFKA_CACHE_DIR/*" \
        org.apache.kafka.tools.BrokerApiVersionsCommand \
        --bootstrap-server "$bootstrap" 2>&1)" || return 1
    PROBE_MISSING=""
    for node in "$@"; do
        grep -qE "\(id: $node [^)]*\) -> \(" <<<"$output" || PROBE_MISSING+="${PROBE_MISSING:+ }$node"
    done
    [ -z "$PROBE_MISSING" ]
}

# Waits until every node given (ids) answers; on failure sets FAIL_REASON and FAIL_NODES (the
# nodes at fault) and returns 1.
wait_until_answers() {
    local deadline=$((SECONDS + KAFKA_START_TIMEOUT)) remaining node pid bootstrap="" all_open
    local ports=()
    # The ports each node was started with (its config is written just before it starts).
    for node in "$@"; do
        select_node "$node"
        ports[node]="$(configured_port)"
        bootstrap+="${bootstrap:+,}127.0.0.1:${ports[node]}"
    done
    if [ "$KAFKA_NODES" -eq 1 ]; then
        progress "waiting for the broker on $bootstrap to answer (up to ${KAFKA_START_TIMEOUT}s)"
    else
        progress "waiting for node(s) $* on $bootstrap to answer (up to ${KAFKA_START_TIMEOUT}s)"
    fi
    PROBE_MISSING="$*"
    while [ "$SECONDS" -lt "$deadline" ]; do
        all_open=1
        for node in "$@"; do
            select_node "$node"
            pid="$(<"$PID_FILE")"
            if ! is_alive "$pid"; then
                if [ "$KAFKA_NODES" -eq 1 ]; then
                    FAIL_REASON="the broker process (pid $pid) exited"
                else
                    FAIL_REASON="node $node (pid $pid) exited"
                fi
                FAIL_NODES="$node"
                return 1
            fi
            port_open "${ports[node]}" || all_open=0
        done
        # The JVM probe costs a second or two of CPU, so only try it once the ports accept.
        if [ "$all_open" -eq 1 ]; then
            remaining=$((deadline - SECONDS))
            if broker_answers "$bootstrap" "$((remaining > 5 ? remaining : 5))" "$@"; then return 0; fi
        fi
        sleep 0.5
    done
    if [ "$KAFKA_NODES" -eq 1 ]; then
        FAIL_REASON="no answer from $bootstrap within ${KAFKA_START_TIMEOUT}s"
    else
        FAIL_REASON="no answer from node(s) $PROBE_MISSING within ${KAFKA_START_TIMEOUT}s"
    fi
    FAIL_NODES="$PROBE_MISSING"
    return 1
}

launch_broker() {
    local heap_opts extra_opts
    read -r -a heap_opts <<<"$KAFKA_HEAP_OPTS"
    read -r -a extra_opts <<<"$KAFKA_OPTS"
    LOG_START_LINE[NODE_ID]=1
    if [ -f "$LOG_FILE" ]; then LOG_START_LINE[NODE_ID]=$(($(wc -l <"$LOG_FILE") + 1)); fi
    printf '\n=== %s kafka.sh start: Kafka %s on 127.0.0.1:%s ===\n' \
        "$(date '+%Y-%m-%d %H:%M:%S')" "$KAFKA_VERSION" "$NODE_PORT" >>"$LOG_FILE"
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
    this_run="$(tail -n +"${LOG_START_LINE[NODE_ID]:-1}" "$LOG_FILE")"
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

# SIGTERM to all pids at once (a cluster shuts down together: stopped one by one, the last
# nodes would wait for a controller quorum that is already gone), SIGKILL to what is left.
stop_pids() {
    local pid deadline running
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + KAFKA_STOP_TIMEOUT))
    while [ "$SECONDS" -lt "$deadline" ]; do
        running=0
        for pid in "$@"; do if is_alive "$pid"; then running=1; fi; done
        [ "$running" -eq 1 ] || return 0
        sleep 0.2
    done
    for pid in "$@"; do
        if is_alive "$pid"; then
            progress "broker (pid $pid) still running after ${KAFKA_STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while is_alive "$pid"; do sleep 0.1; done
        fi
    done
}

stop_pid() { stop_pids "$1"; }

cmd_start() {
    local pid port
    lock_data_dir
    if [ "$KAFKA_NODES" -gt 1 ]; then
        start_cluster_nodes $(seq 1 "$KAFKA_NODES")
        return 0
    fi
    if pid="$(broker_pid)"; then
        port="$(configured_port)"
        progress "broker for $KAFKA_DATA_DIR already running (pid $pid)"
        wait_until_answers 1 || die "broker (pid $pid) runs but does not answer: $FAIL_REASON"
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
    if ! wait_until_answers 1; then
        report_start_failure
        # Leave nothing half-started behind for the next start to trip over.
        if is_alive "$pid"; then stop_pid "$pid"; fi
        rm -f "$PID_FILE"
        exit 1
    fi
    echo "kafka: broker up at 127.0.0.1:$KAFKA_PORT${KAFKA_SASL_PORT:+ (SASL_PLAINTEXT on 127.0.0.1:$KAFKA_SASL_PORT)} (pid $pid)"
}

# Starts the given cluster nodes that are not running (on their kept data) and waits until all
# of them answer. The caller holds the data dir lock.
start_cluster_nodes() {
    local node pid port to_launch=() pids=() launched_pids=()
    for node in "$@"; do
        select_node "$node"
        if pid="$(broker_pid)"; then
            progress "node $node already running (pid $pid)"
            continue
        fi
        rm -f "$PID_FILE"
        for port in "$NODE_PORT" "$NODE_CONTROLLER_PORT"; do
            if port_open "$port"; then
                die "127.0.0.1:$port (node $node) is already in use by another process; choose other ports with KAFKA_PORT / KAFKA_CONTROLLER_PORT or stop what holds it"
            fi
        done
        to_launch+=("$node")
    done
    if [ "${#to_launch[@]}" -gt 0 ]; then
        fetch_jars
        echo "$KAFKA_NODES" >"$NODES_FILE"
        for node in "${to_launch[@]}"; do
            select_node "$node"
            write_config
            format_storage
        done
        for node in "${to_launch[@]}"; do
            select_node "$node"
            progress "starting node $node on 127.0.0.1:$NODE_PORT (log: $LOG_FILE)"
            launch_broker
            launched_pids+=("$(<"$PID_FILE")")
        done
    fi
    if ! wait_until_answers "$@"; then
        for node in $FAIL_NODES; do
            select_node "$node"
            report_start_failure
        done
        # Leave nothing half-started behind for the next start to trip over; nodes that ran
        # before this command keep running.
        if [ "${#launched_pids[@]}" -gt 0 ]; then stop_pids "${launched_pids[@]}"; fi
        for node in "${to_launch[@]}"; do
            select_node "$node"
            rm -f "$PID_FILE"
        done
        exit 1
    fi
    for node in "$@"; do
        select_node "$node"
        pids+=("$(<"$PID_FILE")")
    done
    if [ "$#" -eq 1 ]; then
        echo "kafka: node $1 up at 127.0.0.1:$NODE_PORT (pid ${pids[0]})"
    else
        echo "kafka: cluster of $# nodes up at $ALL_BOOTSTRAP (pids ${pids[*]})"
    fi
}

cmd_start_node() {
    if [ "$KAFKA_NODES" -eq 1 ]; then
        cmd_start
        return 0
    fi
    lock_data_dir
    local node others_running=0
    for ((node = 1; node <= KAFKA_NODES; node++)); do
        select_node "$node"
        if [ "$node" != "$1" ] && broker_pid >/dev/null; then others_running=$((others_running + 1)); fi
    done
    # Said up front because the wait would otherwise look like a hang: a node is unfenced only
    # by an active controller, and electing one takes a majority of the voters.
    if [ $((others_running + 1)) -le $((KAFKA_NODES / 2)) ]; then
        progress "only $others_running other node(s) running: node $1 answers once a majority ($((KAFKA_NODES / 2 + 1)) of $KAFKA_NODES) of the nodes is up"
    fi
    start_cluster_nodes "$1"
}

# SIGKILL, as a crash would: no controlled shutdown, no flush; the data stays for start-node.
cmd_kill_node() {
    local pid
    lock_data_dir
    select_node "$1"
    pid="$(broker_pid)" || die "$NODE_NAME is not running ($NODE_DIR), nothing to kill"
    kill -KILL "$pid"
    while is_alive "$pid"; do sleep 0.1; done
    rm -f "$PID_FILE"
    echo "kafka: $NODE_NAME killed (pid $pid)"
}

cmd_stop() {
    local pid node pids=()
    if [ ! -d "$KAFKA_DATA_DIR" ]; then
        echo "kafka: broker not running ($KAFKA_DATA_DIR does not exist)"
        return 0
    fi
    lock_data_dir
    for ((node = 1; node <= KAFKA_NODES; node++)); do
        select_node "$node"
        if pid="$(broker_pid)"; then pids+=("$pid"); else rm -f "$PID_FILE"; fi
    done
    if [ "${#pids[@]}" -eq 0 ]; then
        echo "kafka: broker not running ($KAFKA_DATA_DIR)"
        return 0
    fi
    if [ "$KAFKA_NODES" -eq 1 ]; then
        progress "stopping broker (pid ${pids[0]})"
    else
        progress "stopping cluster (pids ${pids[*]})"
    fi
    stop_pids "${pids[@]}"
    for ((node = 1; node <= KAFKA_NODES; node++)); do
        select_node "$node"
        rm -f "$PID_FILE"
    done
    if [ "$KAFKA_NODES" -eq 1 ]; then
        echo "kafka: broker stopped (pid ${pids[0]})"
    else
        echo "kafka: cluster stopped (pids ${pids[*]})"
    fi
}

cmd_status() {
    local pid node running=0
    if [ "$KAFKA_NODES" -eq 1 ]; then
        if pid="$(broker_pid)"; then
            echo "kafka: broker running at 127.0.0.1:$(configured_port) (pid $pid, data $KAFKA_DATA_DIR)"
            exit 0
        fi
        echo "kafka: broker not running (data $KAFKA_DATA_DIR)"
        exit 3
    fi
    for ((node = 1; node <= KAFKA_NODES; node++)); do
        select_node "$node"
        if pid="$(broker_pid)"; then
            echo "kafka: node $node running at 127.0.0.1:$(configured_port) (pid $pid, data $NODE_DIR)"
            running=$((running + 1))
        else
            echo "kafka: node $node not running (data $NODE_DIR)"
        fi
    done
    echo "kafka: $running of $KAFKA_NODES nodes running (data $KAFKA_DATA_DIR)"
    [ "$running" -eq "$KAFKA_NODES" ] && exit 0
    [ "$running" -eq 0 ] && exit 3
    exit 4
}

case "${1:-}" in
kill-node | start-node)
    [ "$#" -eq 2 ] && [[ "$2" =~ ^[1-9][0-9]*$ ]] && [ "$2" -le "$KAFKA_NODES" ] ||
        usage_error "$1 needs one node number from 1 to $KAFKA_NODES (KAFKA_NODES=$KAFKA_NODES), got '${*:2}'"
    ;;
*) [ "$#" -eq 1 ] || usage ;;
esac
case "$1" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
kill-node) cmd_kill_node "$2" ;;
start-node) cmd_start_node "$2" ;;
*) usage ;;
esac
