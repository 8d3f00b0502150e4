#!/usr/bin/env bash
# Messages from the users of one server to the users of another over
# federation (S2S), for each kind of server in the same run: two kontalkd,
# two Prosody, two ejabberd (from Debian), each pair as a.test and b.test.
#
#   benches/s2s-relay.sh        (as root; TARGETS="kontalkd prosody ejabberd"
#                                PAIRS=100 SECS=5 WARMUP=1 WINDOW=32 BASE_PORT=15600 PIN=1 KEEP=0)
#
# Everything stays on loopback: a test CA (openssl) signs a certificate for each
# domain (SASL EXTERNAL between the servers), and dnsmasq (dnsmasq-base) answers
# the SRV records of the two domains and refuses every other name. Senders
# (b0, b2, ...) log in on a.test, receivers (b1, b3, ...) on b.test, and
# `kontalkd-load relay --receivers` sends to each receiver's full JID with at most
# WINDOW messages in flight per pair. CPU per message is of both servers
# together, then of each (`--pid #1`: a.test, the senders' server; `#2`:
# b.test, the receivers'); both are pinned to CPU 0 and the generator to
# CPU 1 (PIN=0: off).
# Results go to stdout as `RESULT label metric direction value` lines, then
# the table with the ratios kontalkd/prosody and kontalkd/ejabberd.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGETS=${TARGETS:-"kontalkd prosody ejabberd"}
PAIRS=${PAIRS:-100}
SECS=${SECS:-5}
WARMUP=${WARMUP:-1}
WINDOW=${WINDOW:-32}
BASE_PORT=${BASE_PORT:-15600}
PIN=${PIN:-1}
PASSWORD=benchpw
DNS_PORT=$BASE_PORT

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 's2s-relay: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (the peers run as their own users)"
for t in $TARGETS; do
    case $t in kontalkd | prosody | ejabberd) ;; *) die "unknown target $t (kontalkd prosody ejabberd)" ;; esac
done

(cd "$ROOT" && cargo build --release -p runtime-mio -p kontalkd-benches --bins) >&2
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
KONTALKD="$BIN/kontalkd"
LOAD="$BIN/kontalkd-load"
if ! command -v prosody >/dev/null || ! command -v ejabberdctl >/dev/null \
    || ! command -v dnsmasq >/dev/null || ! command -v openssl >/dev/null \
    || ! dpkg -s lua-unbound >/dev/null 2>&1; then
    log "installing prosody, ejabberd, dnsmasq-base and lua-unbound from Debian"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        prosody ejabberd dnsmasq-base lua-unbound openssl util-linux >&2
fi
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
SERVER_CPU=() GEN_CPU=()
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
    SERVER_CPU=(taskset -c 0)
    GEN_CPU=(taskset -c 1)
fi

WORK=$(mktemp -d /tmp/kontalkd-s2s-relay.XXXXXX)
chmod 755 "$WORK"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
STARTED=()
cleanup() {
    set +e
    for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null; done
    pkill -u ejabberd -f "beam.*s2sbench" 2>/dev/null
    for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null; done
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # PORT: until it accepts connections (30 s at most)
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------- certificates
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=s2s bench CA" -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
for d in a.test b.test; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$d" \
        -keyout "$WORK/$d.key" -out "$WORK/$d.csr" 2>/dev/null
    printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$d" >"$WORK/$d.ext"
    openssl x509 -req -in "$WORK/$d.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" \
        -CAcreateserial -days 30 -extfile "$WORK/$d.ext" -out "$WORK/$d.crt" 2>/dev/null
    chmod 644 "$WORK/$d.key"
done

# ---------------------------------------------------------------- ports, DNS
# Target number K (0, 1, 2): a.test c2s BASE+10K+11, s2s +12, Erlang
# distribution +15; b.test c2s +13, s2s +14, distribution +16.
port() { # K OFFSET
    echo $((BASE_PORT + 10 * $1 + 10 + $2))
}

DNS_PID=""
dns() { # K: SRV records of a.test and b.test for target K
    [ -z "$DNS_PID" ] || { kill "$DNS_PID"; wait "$DNS_PID" 2>/dev/null || true; }
    dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-poll --bind-interfaces \
        --listen-address=127.0.0.1 "--port=$DNS_PORT" --local=/test/ \
        --host-record=localhost,127.0.0.1 "--pid-file=$WORK/dnsmasq.pid" \
        "--srv-host=_xmpp-server._tcp.a.test,localhost,$(port "$1" 2),0,5" \
        "--srv-host=_xmpp-server._tcp.b.test,localhost,$(port "$1" 4),0,5" \
        2>>"$WORK/dnsmasq.log" &
    DNS_PID=$!
    STARTED+=("$DNS_PID")
    sleep 0.3
}

# ---------------------------------------------------------------- kontalkd
PIDS=()
start_kontalkd() { # K DOMAIN C2S S2S
    local dir="$WORK/kontalkd-$2"
    mkdir -p "$dir/data"
    cat >"$dir/kontalkd.toml" <<EOF
[server]
domain = "$2"
data_dir = "$dir/data"
log_level = "warn"
[c2s]
listen = "127.0.0.1"
port = $3
direct_tls_port = 0
require_encryption = false
allow_registration = true
[tls]
certificate = "$WORK/$2.crt"
private_key = "$WORK/$2.key"
[limits]
max_connections = 100000
max_connections_per_ip = 0
max_auth_failures_per_ip = 1000000
stanzas_per_second = 0
[archive]
enabled = false
[upload]
enabled = false
[s2s]
enabled = true
listen = "127.0.0.1"
port = $4
name_servers = ["127.0.0.1:$DNS_PORT"]
ca_files = ["$WORK/ca.crt"]
EOF
    "$KONTALKD" --config "$dir/kontalkd.toml" check >&2
    "${SERVER_CPU[@]}" "$KONTALKD" --config "$dir/kontalkd.toml" run 2>>"$dir/kontalkd.log" &
    STARTED+=("$!")
    PIDS+=("$!")
}

# ---------------------------------------------------------------- Prosody
start_prosody() { # K DOMAIN C2S S2S
    local dir="$WORK/prosody-$2"
    mkdir -p "$dir/data" "$dir/certs"
    cp "$WORK/$2.crt" "$WORK/$2.key" "$dir/certs/"
    cat >"$dir/prosody.cfg.lua" <<EOF
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
log = { error = "$dir/prosody.log" }
interfaces = { "127.0.0.1" }
c2s_ports = { $3 }
s2s_ports = { $4 }
http_ports = { }
https_ports = { }
network_backend = "epoll"
network_settings = { tcp_backlog = 1024 }
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
password_hash = "SHA-256"
default_iteration_count = 4096
allow_registration = true
registration_allowlist = { "127.0.0.1", "::1" }
modules_enabled = { "roster", "saslauth", "tls", "dialback", "disco", "ping", "register", "offline", "posix" }
modules_disabled = { "s2s_bidi" }
certificates = "$dir/certs"
ssl = { cafile = "$WORK/ca.crt" }
use_ipv6 = false
s2s_secure_auth = false
unbound = { resolvconf = false; hoststxt = false; forward = { "127.0.0.1@$DNS_PORT" };
            options = { ["local-zone:"] = "test. transparent" } }
VirtualHost "$2"
EOF
    chown -R prosody: "$dir"
    runuser -u prosody -- sh -c "ulimit -n 20000 && exec ${SERVER_CPU[*]} prosody --config '$dir/prosody.cfg.lua' -F" \
        2>>"$dir/stderr.log" &
    STARTED+=("$!")
    local pid=""
    for _ in $(seq 100); do
        pid=$(pgrep -u prosody -f -- "--config $dir/prosody.cfg.lua" | head -1 || true)
        [ -n "$pid" ] && break
        sleep 0.1
    done
    [ -n "$pid" ] || die "prosody for $2 did not start"
    PIDS+=("$pid")
}

# ---------------------------------------------------------------- ejabberd
start_ejabberd() { # K DOMAIN C2S S2S DIST
    local dir="$WORK/ejabberd-$2" node="s2sbench${2%%.*}@localhost"
    mkdir -p "$dir/spool" "$dir/logs"
    cat "$WORK/$2.key" "$WORK/$2.crt" >"$dir/server.pem"
    printf '{resolv_conf, ""}.\n{nameserver, {127,0,0,1}, %s}.\n{lookup, [dns]}.\n' "$DNS_PORT" >"$dir/inetrc"
    cat >"$dir/ejabberdctl.cfg" <<EOF
ERLANG_NODE=$node
ERL_DIST_PORT=$5
INET_DIST_INTERFACE=127.0.0.1
ERL_MAX_PORTS=32000
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"
EOF
    cat >"$dir/ejabberd.yml" <<EOF
hosts:
  - $2
loglevel: warning
log_rotate_count: 0
certfiles:
  - "$dir/server.pem"
ca_file: "$WORK/ca.crt"
listen:
  -
    port: $3
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: none
    access: all
    starttls: true
    starttls_required: false
    backlog: 1024
  -
    port: $4
    ip: "127.0.0.1"
    module: ejabberd_s2s_in
    shaper: none
    max_stanza_size: 524288
s2s_use_starttls: required
outgoing_s2s_families: [ipv4]
auth_method: internal
auth_password_format: scram
auth_scram_hash: sha256
registration_timeout: infinity
acl:
  local:
    user_regexp: ""
  testdomains:
    server_regexp: "\\\\.test$"
access_rules:
  local:
    allow: local
  register:
    allow: all
  s2s_test:
    allow: testdomains
s2s_access: s2s_test
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
  mod_s2s_dialback: {}
EOF
    chown -R ejabberd: "$dir"
    (cd "$dir/spool" && runuser -u ejabberd -- sh -c "ulimit -n 20000 && HOME='$dir/spool' exec ${SERVER_CPU[*]} ejabberdctl \
        --config-dir '$dir' --spool '$dir/spool' --logs '$dir/logs' foreground") >>"$dir/stdout.log" 2>&1 &
    STARTED+=("$!")
    local pid=""
    for _ in $(seq 300); do
        pid=$(pgrep -u ejabberd -f "beam.*$node" | head -1 || true)
        [ -n "$pid" ] && break
        sleep 0.1
    done
    [ -n "$pid" ] || die "ejabberd for $2 did not start (see $dir)"
    PIDS+=("$pid")
}

stop_all() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    PIDS=()
}

# ---------------------------------------------------------------- the runs
k=0
COLUMNS_=""
for t in $TARGETS; do
    log "$t: a.test -> b.test"
    dns "$k"
    "start_$t" "$k" a.test "$(port "$k" 1)" "$(port "$k" 2)" "$(port "$k" 5)"
    "start_$t" "$k" b.test "$(port "$k" 3)" "$(port "$k" 4)" "$(port "$k" 6)"
    for p in 1 2 3 4; do wait_port "$(port "$k" "$p")" || die "$t does not listen on $(port "$k" "$p")"; done
    for d in a.test:1 b.test:3; do
        "${GEN_CPU[@]}" "$LOAD" register --server "127.0.0.1:$(port "$k" "${d#*:}")" --domain "${d%:*}" \
            --label "$t" --accounts $((2 * PAIRS)) --password "$PASSWORD" --concurrency 20 >/dev/null \
            || die "$t: registration on ${d%:*} failed"
    done
    if ! "${GEN_CPU[@]}" "$LOAD" relay --pairs "$PAIRS" --body 64 --window "$WINDOW" \
        --server "127.0.0.1:$(port "$k" 1)" --domain a.test \
        --receivers "127.0.0.1:$(port "$k" 3)" --receivers-domain b.test \
        --pid "$(IFS=,; echo "${PIDS[*]}")" --label "$t" --name "64 B over S2S" \
        --warmup "$WARMUP" --secs "$SECS" --password "$PASSWORD" | tee -a "$RESULTS"; then
        echo "s2s-relay: $t: the relay failed (see $WORK with KEEP=1)" >&2
    fi
    stop_all
    COLUMNS_="$COLUMNS_,$t"
    k=$((k + 1))
done

echo
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "Parameters: PAIRS=$PAIRS SECS=$SECS WARMUP=$WARMUP WINDOW=$WINDOW PIN=$PIN"
echo "Versions: $("$KONTALKD" --version), prosody $(dpkg-query -W -f='${Version}' prosody), ejabberd $(dpkg-query -W -f='${Version}' ejabberd)"
echo
ratios=()
case ",$COLUMNS_," in *,kontalkd,*prosody*) ratios+=(--ratio kontalkd/prosody) ;; esac
case ",$COLUMNS_," in *,kontalkd,*ejabberd*) ratios+=(--ratio kontalkd/ejabberd) ;; esac
"$LOAD" table "$RESULTS" --columns "${COLUMNS_#,}" "${ratios[@]}"
