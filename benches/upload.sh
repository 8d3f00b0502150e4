#!/usr/bin/env bash
# HTTP file upload (XEP-0363) side by side, in one run: kontalkd's upload
# listener and Prosody's mod_http_file_share (from Debian), both over HTTPS
# with the same certificate, the same files and the same client
# (`kontalkd-load upload`: slots over XMPP, then one connection per PUT and
# per GET, as clients do, every download checked byte for byte). Reports MB/s
# and server CPU per MB for each size and phase, and the ratios.
#
#   benches/upload.sh                  (as root: apt, runuser, taskset)
#
# Knobs (environment): TARGETS ("kontalkd prosody"), SIZES (SIZE:COUNT pairs,
# "1048576:40 52428800:4"), PIN (1: the server on CPU 0, the client on CPU 1),
# BASE_PORT (15400), RESULTS (keep the RESULT lines in this file), KEEP=1
# (keep the temporary directory). The binaries come from CARGO_TARGET_DIR when
# it is set. kontalkd syncs every file to disk before it answers a PUT;
# Prosody does not.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGETS=${TARGETS:-"kontalkd prosody"}
SIZES=${SIZES:-"1048576:40 52428800:4"}
PIN=${PIN:-1}
BASE_PORT=${BASE_PORT:-15400}
PASSWORD=benchpw

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'upload: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get, runuser)"

log "building kontalkd and kontalkd-benches (release)"
(cd "$ROOT" && cargo build --release -p runtime-mio -p kontalkd-benches) >&2
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
KONTALKD="$BIN/kontalkd"
LOAD="$BIN/kontalkd-load"

if ! command -v prosody >/dev/null || ! command -v openssl >/dev/null \
    || ! command -v taskset >/dev/null; then
    log "installing prosody from Debian"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prosody openssl util-linux >&2
fi

SERVER_CPU=() GEN_CPU=()
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
    SERVER_CPU=(taskset -c 0)
    GEN_CPU=(taskset -c 1)
fi

WORK=$(mktemp -d /tmp/kontalkd-upload.XXXXXX)
chmod 755 "$WORK"
RESULTS=${RESULTS:-$WORK/results.tsv}
: >"$RESULTS"
STARTED=()
cleanup() {
    set +e
    for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null; done
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,DNS:media.localhost,DNS:upload.localhost" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

C2S_KONTALKD=$((BASE_PORT + 1)) HTTP_KONTALKD=$((BASE_PORT + 2))
C2S_PROSODY=$((BASE_PORT + 11)) HTTP_PROSODY=$((BASE_PORT + 12))

wait_port() { # PORT
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    die "nothing listens on port $1"
}

start_kontalkd() {
    local dir="$WORK/kontalkd"
    mkdir -p "$dir/data"
    cat >"$dir/kontalkd.toml" <<EOF
[server]
domain = "localhost"
data_dir = "$dir/data"
log_level = "warn"
[c2s]
listen = "127.0.0.1"
port = $C2S_KONTALKD
direct_tls_port = 0
require_encryption = false
[tls]
certificate = "$WORK/cert.pem"
private_key = "$WORK/key.pem"
[archive]
enabled = false
[upload]
listen = "127.0.0.1"
port = $HTTP_KONTALKD
public_url = "https://localhost:$HTTP_KONTALKD"
max_file_size = 67108864
quota = 0
EOF
    "$KONTALKD" --config "$dir/kontalkd.toml" adduser b0@localhost --password "$PASSWORD" >&2
    "${SERVER_CPU[@]}" "$KONTALKD" --config "$dir/kontalkd.toml" run 2>>"$dir/kontalkd.log" &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    wait_port "$C2S_KONTALKD"
    wait_port "$HTTP_KONTALKD"
    C2S=$C2S_KONTALKD SERVICE=media.localhost
}

start_prosody() {
    local dir="$WORK/prosody"
    mkdir -p "$dir/data" "$dir/certs"
    for name in localhost upload.localhost; do
        cp "$WORK/cert.pem" "$dir/certs/$name.crt"
        cp "$WORK/key.pem" "$dir/certs/$name.key"
    done
    cat >"$dir/prosody.cfg.lua" <<EOF
-- Prosody for the upload benchmark: loopback, plaintext c2s, no mod_limits.
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
log = { error = "$dir/prosody.log" }
interfaces = { "127.0.0.1" }
c2s_ports = { $C2S_PROSODY }
s2s_ports = { }
http_ports = { }
https_ports = { $HTTP_PROSODY }
https_interfaces = { "127.0.0.1" }
network_backend = "epoll"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
password_hash = "SHA-256"
modules_enabled = { "roster", "saslauth", "tls", "disco", "ping", "posix" }
modules_disabled = { "s2s" }
certificates = "$dir/certs"
https_ssl = { certificate = "$dir/certs/localhost.crt", key = "$dir/certs/localhost.key" }
VirtualHost "localhost"
Component "upload.localhost" "http_file_share"
    http_host = "localhost"
    http_external_url = "https://localhost:$HTTP_PROSODY/"
    http_file_share_size_limit = 64 * 1024 * 1024
    http_file_share_daily_quota = 100 * 1024 * 1024 * 1024
    http_file_share_global_quota = 1024 * 1024 * 1024 * 1024
EOF
    chown -R prosody: "$dir"
    runuser -u prosody -- prosodyctl --config "$dir/prosody.cfg.lua" \
        register b0 localhost "$PASSWORD" >&2
    runuser -u prosody -- sh -c "ulimit -n 20000 && exec ${SERVER_CPU[*]} prosody --config '$dir/prosody.cfg.lua' -F" \
        2>>"$dir/stderr.log" &
    STARTED+=("$!")
    wait_port "$C2S_PROSODY"
    wait_port "$HTTP_PROSODY"
    SERVER_PID=$(pgrep -u prosody -f -- "--config $dir/prosody.cfg.lua" | head -1)
    C2S=$C2S_PROSODY SERVICE=upload.localhost
}

for target in $TARGETS; do
    log "$target"
    "start_$target"
    for pair in $SIZES; do
        size=${pair%%:*} count=${pair##*:}
        "${GEN_CPU[@]}" "$LOAD" upload --server "127.0.0.1:$C2S" --service "$SERVICE" \
            --size "$size" --count "$count" --pid "$SERVER_PID" --label "$target" \
            --timeout 120 --deadline 900 | tee -a "$RESULTS"
    done
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    sleep 0.5
done

columns=${TARGETS// /,}
ratios=()
if [[ " $TARGETS " == *" kontalkd "* && " $TARGETS " == *" prosody "* ]]; then
    ratios=(--ratio kontalkd/prosody)
fi
echo
echo "Versions: $("$KONTALKD" --version), prosody $(dpkg-query -W -f='${Version}' prosody)"
"$LOAD" table "$RESULTS" --columns "$columns" "${ratios[@]}"
