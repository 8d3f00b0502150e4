#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, JOBS at a time,
# on the seed corpora in fuzz/corpus; prints each run's execs and exec/s.
# Usage: fuzz/run.sh SECONDS [target...]   (needs nightly and cargo-fuzz)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs=${1:?usage: fuzz/run.sh SECONDS [target...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(c2s_preauth c2s_postauth sasl stanza_roundtrip jid sm_ops kontalk_keys kontalk_register net_link dns_answers s2s_inbound http_upload)
jobs=${JOBS:-2}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo +nightly fuzz build -O -s none
mkdir -p logs
run() {
    local t=$1 start=$SECONDS
    cargo +nightly fuzz run -O -s none "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 \
        > "logs/$t.log" 2>&1 || echo "$t: FAILED (see fuzz/logs/$t.log and fuzz/artifacts/$t)"
    local execs speed
    execs=$(grep -a 'stat::number_of_executed_units' "logs/$t.log" | awk '{print $2}' | tail -n1)
    speed=$(grep -a 'stat::average_exec_per_sec' "logs/$t.log" | awk '{print $2}' | tail -n1)
    echo "$t: ${execs:-?} execs, ${speed:-?} exec/s in $((SECONDS - start))s"
}
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
    run "$t" &
done
wait
