#!/usr/bin/env bash
# Messages between users of two servers of one Kontalk network, beside the
# same load between users of one server, in the same run.
#
#   benches/net-relay.sh        (PAIRS=100 SECS=5 BODY=64 BASE_PORT=15500 KEEP=0)
#
# beta.localhost holds the senders (b0, b2, ...) and, for the baseline, PAIRS
# local pairs (l0, l1, ...); prime.localhost holds the receivers (b1, b3, ...).
# `kontalkd-load relay` runs once with the receivers on prime (every message
# is kept in beta's outbox, crosses the link, is kept in prime's inbox and
# delivered, and its ack deletes it from beta's outbox), again with stream
# management (the generator checks that every message arrives once and in
# order, and every ack request is answered), and once between beta's local
# pairs. CPU per message is of both servers together. Results
# go to stdout as `RESULT label metric direction value` lines.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PAIRS=${PAIRS:-100}
SECS=${SECS:-5}
BODY=${BODY:-64}
BASE_PORT=${BASE_PORT:-15500}

die() { printf 'net-relay: %s\n' "$*" >&2; exit 1; }
command -v python3 >/dev/null || die "python3 is needed (apt-get install python3)"

(cd "$ROOT" && cargo build --release -p runtime-mio -p kontalkd-benches --bins) >&2
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
KONTALKD="$BIN/kontalkd"
LOAD="$BIN/kontalkd-load"

WORK=$(mktemp -d /tmp/kontalkd-net-relay.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

base_toml() { # NAME C2S_PORT
    cat <<EOF
[server]
domain = "localhost"
data_dir = "$WORK/$1/data"
log_level = "warn"
[c2s]
listen = "127.0.0.1"
port = $2
direct_tls_port = 0
require_encryption = false
[limits]
max_connections = 100000
max_connections_per_ip = 0
max_auth_failures_per_ip = 1000000
stanzas_per_second = 0
[archive]
enabled = false
[upload]
enabled = false
EOF
}
# shellcheck source=benches/net-pair.sh
. "$ROOT/benches/net-pair.sh"

accounts() { # NAME NAMES...: the accounts, copies of one made with `kontalkd adduser`
    local name=$1; shift
    "$KONTALKD" --config "$WORK/$name/kontalkd.toml" adduser "seed-$name@localhost" --password benchpw >&2
    python3 - "$WORK/$name/data/kontalkd.sqlite" "seed-$name" "$@" <<'EOF'
import sqlite3, sys
db, seed_name, names = sys.argv[1], sys.argv[2], sys.argv[3:]
c = sqlite3.connect(db)
cols = [r[1] for r in c.execute("PRAGMA table_info(accounts)") if r[1] != 'username']
seed = c.execute("SELECT %s FROM accounts WHERE username = ?" % ','.join(cols), (seed_name,)).fetchone()
with c:
    c.executemany("INSERT INTO accounts (username, %s) VALUES (?%s)"
                  % (','.join(cols), ',?' * len(cols)), (((n,) + tuple(seed)) for n in names))
    c.executemany("INSERT INTO directory_log (username, present) VALUES (?, 1)", ((n,) for n in names))
EOF
}
# Passwords are the seed's: SCRAM salts are per account, the same for the copies.
accounts beta $(for i in $(seq 0 $((PAIRS - 1))); do echo "b$((2 * i))"; done) \
    $(for i in $(seq 0 $((2 * PAIRS - 1))); do echo "l$i"; done)
accounts prime $(for i in $(seq 0 $((PAIRS - 1))); do echo "b$((2 * i + 1))"; done)

start() { # NAME
    "$KONTALKD" --config "$WORK/$1/kontalkd.toml" run 2>>"$WORK/$1/kontalkd.log" &
    PIDS+=("$!")
}
start prime
PRIME=${PIDS[-1]}
start beta
BETA=${PIDS[-1]}
for _ in $(seq 600); do
    status beta | grep -q "1 of 1 link(s) up" && status beta | grep -q "^directory: $((PAIRS + 1)) user(s)" &&
        status prime | grep -q "^directory: $((3 * PAIRS + 1)) user(s)" && break
    sleep 0.05
done
status beta | grep -q "1 of 1 link(s) up" || die "no link (see $WORK)"
status beta | grep -q "^directory: $((PAIRS + 1)) user(s)" || die "beta does not know prime's users (see $WORK)"

OUT="$WORK/results"
common=(--pairs "$PAIRS" --body "$BODY" --secs "$SECS" --password benchpw --pid "$BETA,$PRIME")
echo "== across the two servers" >&2
"$LOAD" relay "${common[@]}" --server "127.0.0.1:$((BASE_PORT + 1))" \
    --receivers "127.0.0.1:$((BASE_PORT + 3))" --prefix b --label kontalkd-mio --name "across two servers" | tee -a "$OUT"
echo "== across the two servers, with stream management (every message once, in order)" >&2
"$LOAD" relay "${common[@]}" --server "127.0.0.1:$((BASE_PORT + 1))" --sm --body 64 \
    --receivers "127.0.0.1:$((BASE_PORT + 3))" --prefix b --label kontalkd-mio --name "across two servers, SM" | tee -a "$OUT"
echo "== on one server" >&2
"$LOAD" relay "${common[@]}" --server "127.0.0.1:$((BASE_PORT + 1))" \
    --prefix l --label kontalkd-mio --name "on one server" | tee -a "$OUT"
awk -F'\t' '$3 ~ /: msgs\/s$/ { split($3, m, ":"); rate[m[1]] = $5 }
    END {
        a = rate["relay across two servers"]; o = rate["relay on one server"]
        if (a > 0 && o > 0) printf "RESULT\tkontalkd-mio\trelay across two servers / on one server: msgs/s\t=\t%.2f\n", a / o
    }' "$OUT"
