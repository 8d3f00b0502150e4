#!/usr/bin/env bash
# Side by side, in one run: the TCP forwarder (the physical limit), kontalkd on
# each runtime, Prosody and ejabberd (from Debian), the same accounts and the
# same kontalkd-load scenarios against each, and one table with ratios.
#
#   benches/side-by-side.sh                 (as root: apt, runuser, taskset)
#
# Every scenario runs against a freshly started server (Prosody's relay rate
# drops after a burst of logins and stays low, see shared/PEERS.md). Each
# server is pinned to CPU 0 and the generator to CPU 1 (PIN=0 turns that off),
# so servers are compared per core and the generator has a core of its own.
# Everything the script starts (servers, epmd, the forwarder) is stopped on
# exit; its temporary directory is removed unless KEEP=1.
#
# Knobs (environment): TARGETS, SCENARIOS, PAIRS, LAT_PAIRS, SECS, WARMUP, WINDOW, LOGIN_C,
# IDLE, LAT_RATE, LAT_RUNS, PIN, BASE_PORT, RESULTS (keep the RESULT lines in this file).
# SCENARIOS lists what runs, of: relay relay-1 relay-1k relay-sm relay-sm-noarchive
# latency latency-half login login-tls idle idle-tls kontalk-register kontalk-login
# (default: all of them), e.g.
#   TARGETS=kontalkd-mio SCENARIOS="relay-sm relay-sm-noarchive" SECS=2 PAIRS=10 ...
# The binaries come from CARGO_TARGET_DIR when it is set.
# The Kontalk scenarios (kontalkd only: Prosody and ejabberd have no Kontalk
# registration) make LOGIN_C identities with the client emulator
# (tests/clients/kontalk_client.py, Python with cryptography: KONTALK_PYTHON, else
# .venv/bin/python, else a venv made in the temporary directory), register them
# over and over with the codes through the generator's own SMS gateway, then log
# them in with SASL EXTERNAL; kontalk-login needs the registrations, so it runs
# kontalk-register first (its figures are kept too).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGETS=${TARGETS:-"kontalkd-mio kontalkd-smol prosody ejabberd forwarder"}
ALL_SCENARIOS="relay relay-1 relay-1k relay-sm relay-sm-noarchive latency latency-half login login-tls idle idle-tls kontalk-register kontalk-login"
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}
PAIRS=${PAIRS:-100}        # relay: sender/receiver pairs
LAT_PAIRS=${LAT_PAIRS:-10} # latency: pairs (one generator thread polls them all)
SECS=${SECS:-5}            # measured seconds per scenario
WARMUP=${WARMUP:-1}        # seconds before measuring
WINDOW=${WINDOW:-32}       # relay: messages in flight per pair
LOGIN_C=${LOGIN_C:-50}     # login: concurrent clients
IDLE=${IDLE:-2000}         # idle: sessions
LAT_RATE=${LAT_RATE:-5000} # latency: the fixed rate every target gets (messages/s)
LAT_RUNS=${LAT_RUNS:-3}    # latency at half max: runs (the table shows the median and range)
PIN=${PIN:-1}
BASE_PORT=${BASE_PORT:-15200}
PASSWORD=benchpw

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'side-by-side: %s\n' "$*" >&2; exit 1; }

has() { case " $SCENARIOS " in *" $1 "*) return 0 ;; esac; return 1; } # SCENARIO: selected?
for s in $SCENARIOS; do
    case " $ALL_SCENARIOS " in *" $s "*) ;; *) die "unknown scenario $s (of: $ALL_SCENARIOS)" ;; esac
done

ACCOUNTS=$((2 * PAIRS))
if has idle || has idle-tls; then ACCOUNTS=$(( IDLE > ACCOUNTS ? IDLE : ACCOUNTS )); fi
if has login || has login-tls; then ACCOUNTS=$(( LOGIN_C > ACCOUNTS ? LOGIN_C : ACCOUNTS )); fi

[ "$(id -u)" = 0 ] || die "run as root (apt-get, runuser, per-user limits)"

# ---------------------------------------------------------------- set-up
log "building kontalkd, kontalkd-smol and kontalkd-benches (release)"
(cd "$ROOT" && cargo build --release -p runtime-mio -p runtime-smol -p kontalkd-benches) >&2
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
KONTALKD="$BIN/kontalkd"            # on mio
KONTALKD_SMOL="$BIN/kontalkd-smol"  # the same server on smol
LOAD="$BIN/kontalkd-load"
FORWARDER="$BIN/kontalkd-forwarder"

if ! command -v prosody >/dev/null || ! command -v ejabberdctl >/dev/null \
    || ! command -v openssl >/dev/null || ! command -v taskset >/dev/null; then
    log "installing prosody and ejabberd from Debian"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prosody ejabberd openssl util-linux >&2
fi

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

SERVER_CPU=() GEN_CPU=()
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
    SERVER_CPU=(taskset -c 0)
    GEN_CPU=(taskset -c 1)
fi

WORK=$(mktemp -d /tmp/kontalkd-side-by-side.XXXXXX)
chmod 755 "$WORK"
RESULTS=${RESULTS:-$WORK/results.tsv}
: >"$RESULTS"
EPMD_BEFORE=$(pgrep -x epmd || true)
STARTED=()       # PIDs of processes this script started
CUR_PID=""       # the server process being measured
CUR_STOP=""      # how to stop it
# The server configuration of the scenario being run: "" (the base one), sm
# (stream management and the archive on: the "SM + archive" relay) or
# sm-noarchive (kontalkd only: stream management, archive off).
VARIANT=""
declare -A HAS_ARCHIVE # kontalkd target -> 1 when its build has the [archive] section

cleanup() {
    set +e
    [ -n "$CUR_STOP" ] && $CUR_STOP
    for pid in "${STARTED[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${STARTED[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if [ -z "$EPMD_BEFORE" ]; then
        for pid in $(pgrep -x epmd); do kill "$pid" 2>/dev/null; done
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_of() {
    case $1 in
        kontalkd-mio) echo $((BASE_PORT + 22)) ;;
        kontalkd-smol) echo $((BASE_PORT + 32)) ;;
        prosody) echo $((BASE_PORT + 42)) ;;
        ejabberd) echo $((BASE_PORT + 52)) ;;
        forwarder) echo $((BASE_PORT + 99)) ;;
    esac
}

wait_port() { # PORT: until it accepts connections (30 s at most)
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_gone() { # PID: until it exited (10 s, then SIGKILL)
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$1" 2>/dev/null || true
}

# One certificate (ECDSA P-256, CN localhost) for every server, so that the
# STARTTLS figures compare the servers and not their key types.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
chmod 644 "$WORK/key.pem"

GATEWAY_PORT=$((BASE_PORT + 88)) # the generator's SMS gateway (Kontalk scenarios)

EMULATOR="$ROOT/tests/clients/kontalk_client.py"
KPYTHON=""
kontalk_python() { # a Python that has cryptography, made once
    [ -n "$KPYTHON" ] && return 0
    for py in "${KONTALK_PYTHON:-}" "$ROOT/.venv/bin/python" "$WORK/venv/bin/python"; do
        if [ -n "$py" ] && [ -x "$py" ] && "$py" -c "import cryptography" 2>/dev/null; then
            KPYTHON=$py
            return 0
        fi
    done
    log "a Python venv with cryptography for the Kontalk client emulator"
    python3 -m venv "$WORK/venv" >&2 || die "python3 -m venv failed (apt-get install python3-venv)"
    "$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check cryptography==50.0.2 >&2
    KPYTHON="$WORK/venv/bin/python"
}

# ---------------------------------------------------------------- servers
setup_forwarder() { :; }
start_forwarder() {
    "${SERVER_CPU[@]}" "$FORWARDER" --listen "127.0.0.1:$(port_of forwarder)" \
        --password "$PASSWORD" 2>>"$WORK/forwarder.log" &
    CUR_PID=$!
    STARTED+=("$CUR_PID")
    CUR_STOP="stop_pid"
}

stop_pid() {
    kill "$CUR_PID" 2>/dev/null || true
    wait_gone "$CUR_PID"
    CUR_STOP=""
}

kontalkd_config() { # NAME BINARY
    local dir="$WORK/$1"
    mkdir -p "$dir/data"
    cat >"$dir/base.toml" <<EOF
[server]
domain = "localhost"
data_dir = "$dir/data"
log_level = "warn"

[c2s]
listen = "127.0.0.1"
port = $(port_of "$1")
direct_tls_port = 0
require_encryption = false
allow_registration = true

[tls]
certificate = "$WORK/cert.pem"
private_key = "$WORK/key.pem"

[limits]
max_connections = 100000
max_connections_per_ip = 0
max_auth_failures_per_ip = 1000000
stanzas_per_second = 0
EOF
    # Stream management needs no configuration. The archive (XEP-0313) is the
    # section [archive] (on by default) of builds that have it; older builds
    # refuse unknown sections, and have no "SM + archive" row. Prosody and
    # ejabberd run mod_mam only in that row, so kontalkd archives only there.
    printf '\n[archive]\nenabled = true\n' | cat "$dir/base.toml" - >"$dir/kontalkd-sm.toml"
    if "$2" --config "$dir/kontalkd-sm.toml" check >/dev/null 2>&1; then
        HAS_ARCHIVE[$1]=1
        printf '\n[archive]\nenabled = false\n' | cat "$dir/base.toml" - >"$dir/kontalkd.toml"
    else
        HAS_ARCHIVE[$1]=0
        rm "$dir/kontalkd-sm.toml"
        cp "$dir/base.toml" "$dir/kontalkd.toml"
    fi
    cp "$dir/kontalkd.toml" "$dir/kontalkd-sm-noarchive.toml"
    # Kontalk registration with the codes through the generator's gateway, with
    # no throttle (the same numbers register again and again).
    cat "$dir/kontalkd.toml" - >"$dir/kontalkd-kontalk.toml" <<EOF

[kontalk]
verification = "http"
gateway_method = "GET"
gateway_url = "http://127.0.0.1:$GATEWAY_PORT/sms?to={phone}&code={code}"
resend_after = 0
codes_per_address = 0
EOF
    "$2" --config "$dir/kontalkd.toml" check >&2
    "$2" --config "$dir/kontalkd.toml" adduser b0@localhost --password "$PASSWORD" >&2
}

start_kontalkd() { # NAME BINARY
    "${SERVER_CPU[@]}" "$2" --config "$WORK/$1/kontalkd${VARIANT:+-$VARIANT}.toml" run \
        2>>"$WORK/$1/kontalkd.log" &
    CUR_PID=$!
    STARTED+=("$CUR_PID")
    CUR_STOP="stop_pid"
}
setup_kontalkd-mio() { kontalkd_config kontalkd-mio "$KONTALKD"; }
start_kontalkd-mio() { start_kontalkd kontalkd-mio "$KONTALKD"; }
setup_kontalkd-smol() { kontalkd_config kontalkd-smol "$KONTALKD_SMOL"; }
start_kontalkd-smol() { start_kontalkd kontalkd-smol "$KONTALKD_SMOL"; }

setup_prosody() {
    local dir="$WORK/prosody"
    mkdir -p "$dir/data" "$dir/certs"
    cp "$WORK/cert.pem" "$dir/certs/localhost.crt"
    cp "$WORK/key.pem" "$dir/certs/localhost.key"
    prosody_config "$dir/prosody.cfg.lua" ""
    # The "SM + archive" relay: stream management (mod_smacks) and the
    # archive (mod_mam, default storage: internal, files in data_path).
    prosody_config "$dir/prosody-sm.cfg.lua" ', "smacks", "mam"'
    chown -R prosody: "$dir"
    runuser -u prosody -- prosodyctl --config "$dir/prosody.cfg.lua" \
        register b0 localhost "$PASSWORD" >&2
}

prosody_config() { # FILE EXTRA_MODULES
    local dir="$WORK/prosody"
    cat >"$1" <<EOF
-- Prosody for benchmarks: loopback, plaintext allowed, no mod_limits.
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
log = { error = "$dir/prosody.log" }
interfaces = { "127.0.0.1" }
c2s_ports = { $(port_of prosody) }
s2s_ports = { }
network_backend = "epoll"
network_settings = { tcp_backlog = 1024 }
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
password_hash = "SHA-256"
default_iteration_count = 4096
allow_registration = true
registration_allowlist = { "127.0.0.1", "::1" }
modules_enabled = { "roster", "saslauth", "tls", "disco", "ping", "register", "offline", "posix"$2 }
modules_disabled = { "s2s" }
certificates = "$dir/certs"
ssl = { certificate = "$dir/certs/localhost.crt", key = "$dir/certs/localhost.key" }
VirtualHost "localhost"
EOF
}

start_prosody() {
    local dir="$WORK/prosody"
    local cfg="$dir/prosody${VARIANT:+-$VARIANT}.cfg.lua"
    rm -f "$dir/prosody.pid"
    runuser -u prosody -- sh -c "ulimit -n 20000 && exec ${SERVER_CPU[*]} prosody --config '$cfg' -F" \
        2>>"$dir/stderr.log" &
    STARTED+=("$!")
    CUR_PID=""
    for _ in $(seq 100); do
        CUR_PID=$(pgrep -u prosody -f -- "--config $cfg" | head -1 || true)
        [ -n "$CUR_PID" ] && break
        sleep 0.1
    done
    CUR_STOP="stop_pid"
}

EJ_DIR="$WORK/ejabberd"
ejabberdctl_() {
    runuser -u ejabberd -- sh -c "ulimit -n 20000 && exec ${SERVER_CPU[*]} ejabberdctl \
        --config-dir '$EJ_DIR' --spool '$EJ_DIR/spool' --logs '$EJ_DIR/logs' \
        --node bench@localhost $*"
}

setup_ejabberd() {
    mkdir -p "$EJ_DIR/spool" "$EJ_DIR/logs"
    cat "$WORK/cert.pem" "$WORK/key.pem" >"$EJ_DIR/server.pem"
    cp /etc/ejabberd/inetrc "$EJ_DIR/inetrc"
    # ejabberdctl reads ejabberdctl.cfg from --config-dir (the one in /etc
    # would point it back to /etc/ejabberd/ejabberd.yml).
    cat >"$EJ_DIR/ejabberdctl.cfg" <<EOF
ERLANG_NODE=bench@localhost
INET_DIST_INTERFACE=127.0.0.1
ERL_MAX_PORTS=32000
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"
EJABBERD_PID_PATH=$EJ_DIR/ejabberd.pid
EOF
    ejabberd_config "" >"$EJ_DIR/ejabberd-base.yml"
    # The "SM + archive" relay: stream management and the archive (mod_mam on
    # its default backend, mnesia), every message archived.
    ejabberd_config "  mod_stream_mgmt: {}
  mod_mam:
    default: always" >"$EJ_DIR/ejabberd-sm.yml"
    chown -R ejabberd: "$EJ_DIR"
    start_ejabberd
    wait_port "$(port_of ejabberd)" || die "ejabberd did not start (see $EJ_DIR/logs)"
    ejabberdctl_ register b0 localhost "$PASSWORD" >&2
    stop_ejabberd
}

ejabberd_config() { # EXTRA_MODULES (YAML lines under modules:)
    cat <<EOF
# ejabberd for benchmarks: loopback, plaintext allowed, shaper none.
hosts:
  - localhost
loglevel: warning
log_rotate_count: 0
certfiles:
  - "$EJ_DIR/server.pem"
listen:
  -
    port: $(port_of ejabberd)
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: none
    access: all
    starttls: true
    starttls_required: false
    backlog: 1024
auth_method: internal
auth_password_format: scram
auth_scram_hash: sha256
registration_timeout: infinity
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  register:
    allow: all
shaper_rules:
  max_user_offline_messages: 5000
modules:
  mod_disco: {}
  mod_offline: {}
  mod_ping: {}
  mod_register:
    access: register
    ip_access: all
    password_strength: 0
  mod_roster: {}
${1}
EOF
}

start_ejabberd() {
    cp "$EJ_DIR/ejabberd-${VARIANT:-base}.yml" "$EJ_DIR/ejabberd.yml"
    chown ejabberd: "$EJ_DIR/ejabberd.yml"
    ejabberdctl_ foreground >>"$EJ_DIR/stdout.log" 2>&1 &
    STARTED+=("$!")
    CUR_PID=""
    for _ in $(seq 300); do
        CUR_PID=$(pgrep -u ejabberd -f 'beam.*bench@localhost' | head -1 || true)
        [ -n "$CUR_PID" ] && break
        sleep 0.1
    done
    CUR_STOP="stop_ejabberd"
}

stop_ejabberd() {
    ejabberdctl_ stop >/dev/null 2>&1 || true
    [ -n "$CUR_PID" ] && wait_gone "$CUR_PID"
    CUR_STOP=""
}

# ---------------------------------------------------------------- scenarios
start() { # TARGET: a fresh server, ready for clients
    "start_$1"
    [ -n "$CUR_PID" ] || die "$1 did not start"
    wait_port "$(port_of "$1")" || die "$1 does not listen on $(port_of "$1")"
}

stop() {
    if [ -n "$CUR_STOP" ]; then $CUR_STOP; fi
    CUR_PID=""
}

load() { # TARGET SCENARIO ARGS...: one fresh server, one scenario
    local target=$1; shift
    start "$target"
    if ! "${GEN_CPU[@]}" "$LOAD" "$@" --server "127.0.0.1:$(port_of "$target")" \
        --pid "$CUR_PID" --label "$target" --warmup "$WARMUP" --secs "$SECS" \
        --concurrency "$LOGIN_C" >>"$RESULTS"; then
        echo "side-by-side: $target: $1 failed" >&2
    fi
    stop
}

result() { # LABEL METRIC
    awk -F'\t' -v l="$1" -v m="$2" '$2 == l && $3 == m { v = $5 } END { print v }' "$RESULTS"
}

relay_sm() { # TARGET: the relay with stream management, with the archive (and, for kontalkd, without)
    local t=$1 sm=(relay --sm --pairs "$PAIRS" --body 64 --window "$WINDOW")
    if has relay-sm; then
        if [ "${t#kontalkd-}" != "$t" ] && [ "${HAS_ARCHIVE[$t]:-0}" != 1 ]; then
            echo "side-by-side: $t: this build has no [archive] section: no 'SM + archive' row" >&2
        else
            # The forwarder has neither; its row is the floor of this shape.
            VARIANT=sm
            [ "$t" = forwarder ] && VARIANT=""
            load "$t" "${sm[@]}" --name "64 B, SM + archive"
        fi
    fi
    if has relay-sm-noarchive && [ "${t#kontalkd-}" != "$t" ]; then
        VARIANT=sm-noarchive
        load "$t" "${sm[@]}" --name "64 B, SM, no archive"
        # What archiving costs kontalkd per message: the same relay's server
        # CPU with the archive less without it.
        local with without
        with=$(result "$t" "relay 64 B, SM + archive: server CPU µs/msg")
        without=$(result "$t" "relay 64 B, SM, no archive: server CPU µs/msg")
        if [ -n "$with" ] && [ -n "$without" ]; then
            awk -v l="$t" -v a="$with" -v b="$without" 'BEGIN {
                printf "RESULT\t%s\trelay 64 B, SM: archive cost, server CPU µs/msg\t-\t%s\n", l, a - b
            }' >>"$RESULTS"
        fi
    fi
    VARIANT=""
}

half_max() { # LABEL: half its relay 64 B rate, as an integer
    local r
    r=$(result "$1" "relay 64 B: msgs/s")
    [ -n "$r" ] && awk -v r="$r" 'BEGIN { printf "%d", r / 2 }'
}

run_target() {
    local t=$1
    log "$t"
    port_free "$(port_of "$t")" || die "port $(port_of "$t") is in use"
    "setup_$t"
    start "$t"
    "${GEN_CPU[@]}" "$LOAD" register --server "127.0.0.1:$(port_of "$t")" --label "$t" \
        --accounts "$ACCOUNTS" --password "$PASSWORD" --concurrency 20 \
        || die "$t: registration failed"
    stop
    has relay && load "$t" relay --pairs "$PAIRS" --body 64 --window "$WINDOW"
    has relay-1 && load "$t" relay --pairs 1 --body 64 --window "$WINDOW"
    has relay-1k && load "$t" relay --pairs "$PAIRS" --body 1024 --window "$WINDOW"
    relay_sm "$t"
    has latency && load "$t" latency --pairs "$LAT_PAIRS" --body 64 --rate "$LAT_RATE"
    local half=""
    if ! has latency-half; then
        :
    elif [ "$t" = forwarder ]; then
        # The floor at kontalkd's rate: what the generator and the kernel add.
        half=$(half_max kontalkd-mio || true)
    else
        half=$(half_max "$t" || true)
    fi
    if [ -n "$half" ] && [ "$half" -gt 0 ]; then
        # A tail percentile near a server's capacity moves from run to run
        # (a few ms of stall anywhere take long to drain at half capacity):
        # LAT_RUNS runs each, the table shows the median and the range.
        for _ in $(seq "$LAT_RUNS"); do
            load "$t" latency --pairs "$LAT_PAIRS" --body 64 --rate "$half" --name "at ½ max"
            # The same rate in the shape of the relay scenario that measured
            # the maximum: each sender writes what is due every millisecond.
            load "$t" latency --pairs "$LAT_PAIRS" --body 64 --rate "$half" --batch-us 1000 \
                --name "at ½ max, 1 ms batches"
        done
    fi
    [ "$t" = forwarder ] && return 0 # no login or session state: relay only
    has login && load "$t" login
    has login-tls && load "$t" login --tls
    has idle && load "$t" idle --sessions "$IDLE"
    has idle-tls && load "$t" idle --sessions "$IDLE" --tls
    if [ "${t#kontalkd-}" != "$t" ] && { has kontalk-register || has kontalk-login; }; then
        kontalk "$t"
    fi
    return 0
}

kontalk() { # TARGET (kontalkd): registrations, then EXTERNAL logins of the registered
    local t=$1 keys="$WORK/$1/kontalk-keys"
    kontalk_python
    "$KPYTHON" "$EMULATOR" bench-keys --out "$keys" --count "$LOGIN_C" >&2 \
        || die "$t: the emulator made no identities"
    VARIANT=kontalk
    load "$t" kontalk-register --keys "$keys" --gateway "127.0.0.1:$GATEWAY_PORT"
    if has kontalk-login; then
        if "$KPYTHON" "$EMULATOR" bench-certs --dir "$keys" >&2; then
            load "$t" kontalk-login --keys "$keys"
        else
            echo "side-by-side: $t: no certified keys, no EXTERNAL logins" >&2
        fi
    fi
    VARIANT=""
    # EXTERNAL beside SCRAM over STARTTLS: server CPU per login, as a ratio.
    local ext scram
    ext=$(result "$t" "login EXTERNAL (Kontalk certificate): server CPU µs/login")
    scram=$(result "$t" "login STARTTLS: server CPU µs/login")
    if [ -n "$ext" ] && [ -n "$scram" ]; then
        awk -v l="$t" -v a="$ext" -v b="$scram" 'BEGIN {
            printf "RESULT\t%s\tlogin EXTERNAL: server CPU per login / SCRAM over STARTTLS\t=\t%s\n", l, a / b
        }' >>"$RESULTS"
    fi
}

SCENARIOS_NOTE=""
[ "$SCENARIOS" = "$ALL_SCENARIOS" ] || SCENARIOS_NOTE=" SCENARIOS=\"$SCENARIOS\""
COLUMNS_=""
for t in $TARGETS; do
    run_target "$t"
    COLUMNS_="$COLUMNS_,$t"
done

# ---------------------------------------------------------------- the table
ORDER=""
for c in forwarder kontalkd-mio kontalkd-smol prosody ejabberd; do
    case ",$COLUMNS_," in *",$c,"*) ORDER="$ORDER,$c" ;; esac
done
echo
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "Parameters: PAIRS=$PAIRS LAT_PAIRS=$LAT_PAIRS SECS=$SECS WARMUP=$WARMUP WINDOW=$WINDOW LOGIN_C=$LOGIN_C IDLE=$IDLE LAT_RATE=$LAT_RATE LAT_RUNS=$LAT_RUNS PIN=$PIN${SCENARIOS_NOTE:-}"
echo "Versions: $("$KONTALKD" --version), prosody $(dpkg-query -W -f='${Version}' prosody), ejabberd $(dpkg-query -W -f='${Version}' ejabberd)"
echo
"$LOAD" table "$RESULTS" --columns "${ORDER#,}" \
    --ratio kontalkd-mio/prosody --ratio kontalkd-mio/ejabberd
