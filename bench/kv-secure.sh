#!/usr/bin/env bash
# Secure KV benchmark: what client+peer TLS and auth cost. Three 3-member
# clusters, one after the other, same machine, same load generator
# (`phalanx bench kv`):
#   phalanx-plain   no TLS, no auth
#   phalanx-secure  client and peer TLS, client certificates required
#                   (--client-cert-auth, --peer-client-cert-auth), auth enabled
#                   (--auth-token simple, bcrypt cost 10)
#   etcd-secure     etcd 3.4 with exactly the same flags
# Loads: puts and linearizable gets with 64 clients (TLS + a root token on
# every request for the secure clusters), and Authenticate calls with
# AUTH_CLIENTS clients (logins/s, bounded by bcrypt on the server).
#
# Usage: bench/kv-secure.sh       (builds `phalanx` in release mode first)
# Environment (all optional):
#   DURATION=10s          length of each load run
#   AUTH_CLIENTS=8        concurrent clients of the authenticate run
#   SYSTEMS="phalanx-plain phalanx-secure etcd-secure"  (etcd-plain also known)
#   TESTS="auth:8:authenticate"  which loads (name:clients:workload, space-separated;
#                         default: put-64:64:put get-lin-64:64:get-linearizable auth:$AUTH_CLIENTS:authenticate)
#   SKIP_BUILD=1          use an existing release binary
#   CARGO_TARGET_DIR      where the release binary is (default: ./target)
#   PHALANX=/path/phalanx, ETCD=/usr/bin/etcd, ETCDCTL=/usr/bin/etcdctl
#   OPENSSL=openssl       makes the CA and certificates
#   BENCH_TMP=/some/dir   parent of the data dirs (default: $TMPDIR or /tmp)
#   KEEP=1                keep data dirs, certificates and logs after the run
# Prints a markdown table with the ratios. Exits non-zero only if a tool is
# missing or the build fails.
set -u -o pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_setup kv-secure.sh kv-secure
OPENSSL=${OPENSSL:-openssl}
AUTH_CLIENTS=${AUTH_CLIENTS:-8}
SYSTEMS=${SYSTEMS:-"phalanx-plain phalanx-secure etcd-secure"}
ROOT_PW="bench-root-$$"

require_tools "etcd-server, etcd-client, openssl, python3" "$ETCD" "$ETCDCTL" "$OPENSSL" python3
build_phalanx

# ---- certificates: one CA; one member certificate (client and peer ports,
# 127.0.0.1 and localhost); a client certificate with CN root. -------------
C=$WORK/certs
mkdir -p "$C"
make_certs() {
    "$OPENSSL" ecparam -name prime256v1 -genkey -noout -out "$C/ca.key" &&
    "$OPENSSL" req -x509 -new -key "$C/ca.key" -subj "/CN=kv-secure bench CA" -days 2 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
        -out "$C/ca.pem" || return 1
    local name cn san
    for spec in "member:member:IP:127.0.0.1,DNS:localhost" "root:root:DNS:root.client"; do
        IFS=: read -r name cn san <<<"$spec"
        "$OPENSSL" ecparam -name prime256v1 -genkey -noout -out "$C/$name.ec.key" &&
        "$OPENSSL" pkcs8 -topk8 -nocrypt -in "$C/$name.ec.key" -out "$C/$name.key" &&
        "$OPENSSL" req -new -key "$C/$name.key" -subj "/CN=$cn" -out "$C/$name.csr" &&
        printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n' "$san" >"$C/$name.ext" &&
        "$OPENSSL" x509 -req -in "$C/$name.csr" -CA "$C/ca.pem" -CAkey "$C/ca.key" -CAcreateserial \
            -days 2 -extfile "$C/$name.ext" -out "$C/$name.crt" || return 1
    done
}
make_certs >"$C/openssl.log" 2>&1 || { log "making certificates failed: $(tail -3 "$C/openssl.log")"; exit 2; }
CLIENT_TLS=(--cacert "$C/ca.pem" --cert "$C/root.crt" --key "$C/root.key")
SERVER_TLS=(--cert-file "$C/member.crt" --key-file "$C/member.key" --trusted-ca-file "$C/ca.pem" --client-cert-auth
            --peer-cert-file "$C/member.crt" --peer-key-file "$C/member.key" --peer-trusted-ca-file "$C/ca.pem" --peer-client-cert-auth
            --auth-token simple)

ENDPOINTS=""
SEC=()   # client flags of the current system

start_cluster() {  # $1 = system; returns non-zero if not ready
    local sys=$1 dir="$WORK/$1" scheme=http
    local bin=("$PHALANX" node) extra=()
    case $sys in etcd-*) bin=("$ETCD") ;; esac
    case $sys in *-secure) scheme=https; extra=("${SERVER_TLS[@]}") ;; esac
    SEC=()
    start_members "$scheme" "kv-secure-$sys-$$" "$dir" "${bin[@]}" -- "${extra[@]}"
    [ "$scheme" = https ] && SEC=("${CLIENT_TLS[@]}")
    local deadline=$((SECONDS + 60))
    while [ $SECONDS -lt $deadline ]; do
        members_alive "$sys" "$dir" || return 1
        if "$PHALANX" bench status --endpoints "$ENDPOINTS" --timeout-ms 2000 "${SEC[@]}" 2>/dev/null \
            | python3 -c 'import json,sys; l=[json.loads(x) for x in sys.stdin]; sys.exit(0 if len(l)==3 and all("error" not in s for s in l) and any(s.get("is_leader") for s in l) else 1)'; then
            break
        fi
        sleep 0.2
    done
    [ $SECONDS -lt $deadline ] || { log "$sys cluster not ready within 60 s; see $dir/*.log"; return 1; }
    if [ "$scheme" = https ]; then
        # Auth on: root (etcd 3.4 needs the user before `auth enable`).
        local ctl=("$ETCDCTL" --endpoints="$ENDPOINTS" --command-timeout=10s "${CLIENT_TLS[@]}")
        { "${ctl[@]}" user add "root:$ROOT_PW" && "${ctl[@]}" user grant-role root root && "${ctl[@]}" auth enable; } \
            >"$dir/auth-setup.log" 2>&1 || { log "$sys: enabling auth failed: $(tail -2 "$dir/auth-setup.log")"; return 1; }
        SEC+=(--user "root:$ROOT_PW")
    fi
    return 0
}

declare -A R STATUS

TESTS=${TESTS:-"put-64:64:put get-lin-64:64:get-linearizable auth:$AUTH_CLIENTS:authenticate"}

for sys in $SYSTEMS; do
    start_measuring "$sys" || continue
    for spec in $TESTS; do
        IFS=: read -r name clients workload <<<"$spec"
        case "$workload:$sys" in authenticate:*-plain) continue ;; esac
        run_load "$sys" "$name" "$clients" "$workload" "${SEC[@]}"
    done
    stop_cluster
done

# ---- report ---------------------------------------------------------------
ops() { field "${R[$1]:-}" "'%.0f' % r['ops_per_sec']"; }
cell() {  # ops/s (p50 / p99 ms, errors)
    local f=${R[$1]:-}
    [ -n "$f" ] || { echo "n/a"; return; }
    field "$f" "'%.0f (%.2f / %.2f ms, %d err)' % (r['ops_per_sec'], r['latency']['p50_us']/1e3, r['latency']['p99_us']/1e3, r['errors_total'])"
}

echo
echo "## Secure KV benchmark: TLS + auth, 3-member phalanx vs 3-member etcd $("$ETCD" --version 2>/dev/null | head -1 | awk '{print $3}')"
echo
echo "Same machine ($(nproc) cores), loopback, 256-byte values, 10,000 keys, $DURATION per run. Secure = client and peer TLS"
echo "(ECDSA P-256, client certificates required on both ports) + auth enabled (simple tokens, bcrypt cost 10), every request carrying root's token."
for sys in $SYSTEMS; do
    [ "${STATUS[$sys]:-}" = ok ] || echo "**$sys: ${STATUS[$sys]:-not run}** (logs: $WORK/$sys)"
done
echo
echo "Cells: ops/s (p50 / p99 latency, errors)."
echo
echo "| test | phalanx plain | phalanx TLS+auth | etcd TLS+auth | phalanx TLS+auth / plain | phalanx / etcd (both TLS+auth) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for spec in $TESTS; do
    IFS=: read -r name clients workload <<<"$spec"
    label="$workload, $clients clients"
    [ "$workload" = authenticate ] && label="Authenticate (logins/s), $clients clients"
    echo "| $label | $(cell "phalanx-plain.$name") | $(cell "phalanx-secure.$name") | $(cell "etcd-secure.$name") | $(ratio "$(ops "phalanx-secure.$name")" "$(ops "phalanx-plain.$name")") | $(ratio "$(ops "phalanx-secure.$name")" "$(ops "etcd-secure.$name")") |"
done
