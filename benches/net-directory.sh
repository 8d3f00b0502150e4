#!/usr/bin/env bash
# The Kontalk network's directory: how long a server takes to learn the USERS
# users of another server of its network, what they cost it in memory, and
# the CPU both servers spend on it.
#
#   benches/net-directory.sh        (USERS=100000 PIN=1 BASE_PORT=15400 KEEP=0)
#
# prime.localhost holds USERS accounts (made directly in its database, copies
# of one made with `kontalkd adduser`, each with its directory change, as
# account creation makes them); beta.localhost starts alone once (its memory
# is read), then prime starts, then beta again, which opens the link at once
# and fetches the directory. The time runs from just before beta's second
# start (its start-up included) to its first status that shows every user
# (polled every 20 ms), and its log must say it caught up with exactly USERS
# changes. The CPU of beta is all of its second run; of prime, from when it
# is ready to the end. Each server is pinned
# to a core of its own (PIN=0 turns that off). Results go to stdout as
# `RESULT label metric direction value` lines, then a table.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
USERS=${USERS:-100000}
PIN=${PIN:-1}
BASE_PORT=${BASE_PORT:-15400}

die() { printf 'net-directory: %s\n' "$*" >&2; exit 1; }
command -v python3 >/dev/null || die "python3 is needed (apt-get install python3)"

(cd "$ROOT" && cargo build --release -p runtime-mio) >&2
KONTALKD="${CARGO_TARGET_DIR:-$ROOT/target}/release/kontalkd"

WORK=$(mktemp -d /tmp/kontalkd-net-directory.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

pin() { # CPU: the command prefix that pins to it
    if [ "$PIN" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
        echo "taskset -c $1"
    fi
}

base_toml() { # NAME C2S_PORT
    cat <<EOF
[server]
domain = "localhost"
data_dir = "$WORK/$1/data"
log_level = "info"
[c2s]
listen = "127.0.0.1"
port = $2
direct_tls_port = 0
[upload]
enabled = false
EOF
}
# shellcheck source=benches/net-pair.sh
. "$ROOT/benches/net-pair.sh"

echo "== $USERS accounts on prime" >&2
"$KONTALKD" --config "$WORK/prime/kontalkd.toml" adduser seed@localhost --password benchpw >&2
python3 - "$WORK/prime/data/kontalkd.sqlite" "$USERS" <<'EOF'
import sqlite3, sys
db, n = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db)
cols = [r[1] for r in c.execute("PRAGMA table_info(accounts)") if r[1] != 'username']
seed = c.execute("SELECT %s FROM accounts WHERE username = 'seed'" % ','.join(cols)).fetchone()
with c:
    c.executemany("INSERT INTO accounts (username, %s) VALUES (?%s)"
                  % (','.join(cols), ',?' * len(cols)),
                  ((('u%07d' % i),) + tuple(seed) for i in range(n - 1)))
    c.executemany("INSERT INTO directory_log (username, present) VALUES (?, 1)",
                  ((('u%07d' % i),) for i in range(n - 1)))
print(c.execute("SELECT count(*) FROM directory_log").fetchone()[0], file=sys.stderr)
EOF

cpu() { # PID: user + system seconds
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
start() { # NAME CPU
    $(pin "$2") "$KONTALKD" --config "$WORK/$1/kontalkd.toml" run 2>>"$WORK/$1/kontalkd.log" &
    PIDS+=("$!")
    for _ in $(seq 200); do
        status "$1" | grep -q '^uptime' && return 0
        sleep 0.05
    done
    die "$1 did not start (see $WORK/$1/kontalkd.log)"
}

echo "== beta alone (its memory), then prime, then beta again" >&2
start beta 1
sleep 1
RSS0=$(rss "${PIDS[-1]}")
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
start prime 0
PRIME=${PIDS[-1]}
C0_PRIME=$(cpu "$PRIME")
# beta opens its link at start: the time runs from just before it starts.
T0=$(date +%s.%N)
start beta 1
BETA=${PIDS[-1]}
for _ in $(seq 30000); do
    status beta | grep -q "^directory: $USERS user(s)" && break
    sleep 0.02
done
T1=$(date +%s.%N)
C1_BETA=$(cpu "$BETA") C1_PRIME=$(cpu "$PRIME")
status beta | grep -q "^directory: $USERS user(s)" || die "beta never knew the $USERS users (see $WORK)"
grep -q "net: caught up with the directory of prime.localhost: $USERS changes" \
    "$WORK/beta/kontalkd.log" || die "beta did not catch up with $USERS changes (see $WORK/beta/kontalkd.log)"
sleep 1
RSS1=$(rss "$BETA")

awk -v n="$USERS" -v t0="$T0" -v t1="$T1" -v r0="$RSS0" -v r1="$RSS1" \
    -v b1="$C1_BETA" -v p0="$C0_PRIME" -v p1="$C1_PRIME" 'BEGIN {
    dt = t1 - t0
    printf "RESULT\tkontalkd-mio\tdirectory sync of %d users: seconds from the receiver'"'"'s start\t-\t%.3f\n", n, dt
    printf "RESULT\tkontalkd-mio\tdirectory sync of %d users: receiving server RSS MiB added\t-\t%.1f\n", n, (r1 - r0) / 1024
    printf "RESULT\tkontalkd-mio\tdirectory sync of %d users: receiving server bytes/user\t-\t%.0f\n", n, (r1 - r0) * 1024 / n
    printf "RESULT\tkontalkd-mio\tdirectory sync of %d users: receiving server CPU s (start-up included)\t-\t%.3f\n", n, b1
    printf "RESULT\tkontalkd-mio\tdirectory sync of %d users: sending server CPU s\t-\t%.3f\n", n, p1 - p0
}'
