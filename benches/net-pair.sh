# Sourced by the Net benches: two servers of one network, beta.localhost and
# prime.localhost, on loopback under $WORK, each listing the other with its
# certificate's fingerprint. Needs WORK, KONTALKD, BASE_PORT; the caller
# defines `base_toml NAME C2S_PORT` (the config before [net]).
# Ports: beta c2s BASE_PORT+1, Net +2; prime c2s +3, Net +4.

config() { # NAME C2S_PORT NET_PORT [PEER PEER_NET_PORT PEER_FINGERPRINT]
    local dir="$WORK/$1"
    mkdir -p "$dir"
    base_toml "$1" "$2" >"$dir/kontalkd.toml"
    if [ $# -gt 3 ]; then
        cat >>"$dir/kontalkd.toml" <<EOT
[net]
host = "$1.localhost"
listen = "127.0.0.1"
port = $3
[[net.servers]]
host = "$4.localhost"
address = "127.0.0.1:$5"
fingerprint = "$6"
EOT
    fi
}

# Each server's certificate first (made in its data directory), for the other's list.
config beta $((BASE_PORT + 1)) $((BASE_PORT + 2))
config prime $((BASE_PORT + 3)) $((BASE_PORT + 4))
FPR_BETA=$("$KONTALKD" --config "$WORK/beta/kontalkd.toml" net-fingerprint)
FPR_PRIME=$("$KONTALKD" --config "$WORK/prime/kontalkd.toml" net-fingerprint)
config beta $((BASE_PORT + 1)) $((BASE_PORT + 2)) prime $((BASE_PORT + 4)) "$FPR_PRIME"
config prime $((BASE_PORT + 3)) $((BASE_PORT + 4)) beta $((BASE_PORT + 2)) "$FPR_BETA"

status() { "$KONTALKD" --config "$WORK/$1/kontalkd.toml" status 2>/dev/null || true; }
