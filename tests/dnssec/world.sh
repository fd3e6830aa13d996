#!/usr/bin/env bash
# A private signed DNS world for the DNSSEC tests and benchmarks, built offline with Knot DNS
# (kzonesign, keymgr) and served by knotd on loopback.
#
#   world.sh build DIR [N]              sign every zone into DIR (DIR must not exist yet); with
#                                       N, also bulk.test: n0 ... n<N-1 in hex> A 192.0.2.200
#   world.sh knot-conf DIR ADDR@PORT RUN  print a knotd configuration serving DIR's zones there,
#                                         with its state in the directory RUN
#
# DIR then holds:
#   signed/<zone>.zone   what knotd serves (the root as root.zone), broken on purpose where said
#   root.ds              the private root's trust anchor: its DS records, zone-file syntax
#   root.dnskey          the same anchor as the root's key-signing DNSKEY record
#   delv.conf            the anchor for `delv -a` (trust-anchors { . static-ds ...; };)
#   zones                one line per zone: its name and its file under signed/
#
# The world, under a private root "." that delegates "test." (ECDSA P-256, NSEC):
#   secure.test         ECDSA P-256 (13), NSEC; CNAMEs into the other zones (see below)
#   nsec3.test          13, NSEC3 (0 iterations, no salt); wildcard *.wild.nsec3.test
#   alg8.test           RSASHA256 (8), NSEC
#   alg15.test          Ed25519 (15), NSEC
#   wild.test           13, NSEC; wildcard *.wild.test (A and TXT) beside host.wild.test
#   insecure.test       unsigned, delegated without DS; wildcard *.any.insecure.test
#   optout.test         13, NSEC3 with opt-out; unsigned.optout.test is delegated without DS
#   iter200.test        13, NSEC3 with 200 iterations (over the RFC 9276 limits)
#   bogus.test          13; www's A changed after signing
#   expired.test        13; signed ten days ago with two-day signatures (all expired)
#   nokey.test          13; the parent's DS is of a key the zone does not publish
#   nosig.test          13; the RRSIG of www's A removed
#   nonsec.test         13; every NSEC record and its RRSIG removed (no denial proofs)
#   unknownalg.test     13; the parent's DS names algorithm 100 (unassigned)
#   unknowndigest.test  13; the parent's DS names digest type 100 (unassigned)
#   corp.test           unsigned, not delegated: the parent proves it does not exist (an internal
#                       zone under a signed parent, for forward zones)
# Every zone has `www` A 192.0.2.N (N per zone, see ADDRESSES below) and no TXT at `www`.
# secure.test also has to-insecure, to-bogus and to-nsec3 (CNAMEs to www in those zones).
# bench/run's cold DNSSEC workloads ask unique names: of *.any.insecure.test (unsigned) and of
# bulk.test (signed, 13, NSEC; only built when asked for, as signing takes a while).
# Every NS is ns.nic.test., whose address (127.0.53.53) nothing listens on: a resolver reaches
# knotd through its configured address only, and knotd answers for every zone itself.
set -euo pipefail

# www's address in each zone (bogus.test serves .51 where it signed .50).
declare -A ADDRESSES=(
    [secure.test]=192.0.2.1 [nsec3.test]=192.0.2.2 [alg8.test]=192.0.2.8 [alg15.test]=192.0.2.15
    [wild.test]=192.0.2.20 [insecure.test]=192.0.2.30 [optout.test]=192.0.2.40
    [unsigned.optout.test]=192.0.2.41 [iter200.test]=192.0.2.45 [bogus.test]=192.0.2.50
    [expired.test]=192.0.2.60 [nokey.test]=192.0.2.70 [nosig.test]=192.0.2.80 [nonsec.test]=192.0.2.90
    [unknownalg.test]=192.0.2.100 [unknowndigest.test]=192.0.2.101 [corp.test]=192.0.2.110
)
# Signed children of test., with their signing policy (defined in sign.conf below).
declare -A SIGNED=(
    [secure.test]=p13 [nsec3.test]=nsec3 [alg8.test]=p8 [alg15.test]=p15 [wild.test]=p13
    [optout.test]=optout [iter200.test]=iter200 [bogus.test]=p13 [expired.test]=expired
    [nokey.test]=p13 [nosig.test]=p13 [nonsec.test]=p13 [unknownalg.test]=p13
    [unknowndigest.test]=p13
)
UNSIGNED=(insecure.test unsigned.optout.test corp.test)
NS_ADDRESS=127.0.53.53

usage() {
    echo "usage: $0 build DIR [N] | knot-conf DIR ADDR@PORT RUN" >&2
    exit 2
}

# Writes the unsigned source of zone $1 to $2, with any extra lines from stdin.
zone_source() {
    local zone=$1 file=$2
    {
        printf '$ORIGIN %s.\n$TTL 3600\n' "${zone%.}"
        printf '@ SOA ns.nic.test. hostmaster.nic.test. 1 3600 900 604800 300\n'
        printf '@ NS ns.nic.test.\n'
        [[ -n ${ADDRESSES[$zone]:-} ]] && printf 'www A %s\n' "${ADDRESSES[$zone]}"
        cat
    } >"$file"
}

# Signs zone $1 from src/ into signed/ with the policy its config entry names; extra
# arguments go to kzonesign (-t TIME).
sign() {
    local zone=$1
    shift
    kzonesign -c "$dir/sign.conf" -o "$dir/signed" "$@" "$zone" >/dev/null 2>"$dir/sign.log" || {
        cat "$dir/sign.log" >&2
        echo "world.sh: signing $zone failed" >&2
        exit 1
    }
}

# The DS records (SHA-256 only) of zone $1's key-signing keys, in zone-file syntax.
ds_of() {
    keymgr -c "${2:-$dir/sign.conf}" "$1" ds | awk '$2 == "DS" && $5 == 2 { print $1, 3600, "IN", "DS", $3, $4, $5, $6 }'
}

# The records of the signed zone file $1 except those for which the awk condition $2 holds.
drop_records() {
    awk "!($2)" "$1" >"$1.tmp"
    mv "$1.tmp" "$1"
}

build() {
    dir=$1
    local bulk=${2:-0}
    [[ $bulk =~ ^[0-9]+$ ]] || usage
    ((bulk == 0)) || SIGNED[bulk.test]=p13
    [[ -e $dir ]] && { echo "world.sh: $dir exists" >&2; exit 1; }
    mkdir -p "$dir/src" "$dir/signed" "$dir/kasp" "$dir/decoy-kasp"
    local now policies zones
    now=$(date +%s)
    policies=$(
        cat <<EOF
policy:
  - id: p13
    algorithm: ecdsap256sha256
    cds-cdnskey-publish: none
    zsk-lifetime: 0
    ksk-lifetime: 0
  - id: p8
    algorithm: rsasha256
    ksk-size: 2048
    zsk-size: 1024
    cds-cdnskey-publish: none
    zsk-lifetime: 0
    ksk-lifetime: 0
  - id: p15
    algorithm: ed25519
    cds-cdnskey-publish: none
    zsk-lifetime: 0
    ksk-lifetime: 0
  - id: nsec3
    algorithm: ecdsap256sha256
    nsec3: on
    nsec3-iterations: 0
    nsec3-salt-length: 0
    cds-cdnskey-publish: none
    zsk-lifetime: 0
    ksk-lifetime: 0
  - id: optout
    algorithm: ecdsap256sha256
    nsec3: on
    nsec3-iterations: 0
    nsec3-salt-length: 0
    nsec3-opt-out: on
    cds-cdnskey-publish: none
    zsk-lifetime: 0
    ksk-lifetime: 0
  - id: iter200
    algorithm: ecdsap256sha256
    nsec3: on
    nsec3-iterations: 200
    nsec3-salt-length: 8
    cds-cdnskey-publish: none
    zsk-lifetime: 0
    ksk-lifetime: 0
  - id: expired
    algorithm: ecdsap256sha256
    rrsig-lifetime: 2d
    rrsig-refresh: 1d
    cds-cdnskey-publish: none
    zsk-lifetime: 0
    ksk-lifetime: 0
EOF
    )
    zones=$(
        for zone in . test "${!SIGNED[@]}"; do
            local name=${zone%.}
            local policy=${SIGNED[$zone]:-p13}
            printf '  - domain: %s\n    file: %s/src/%s.zone\n    dnssec-signing: on\n    dnssec-policy: %s\n' \
                "${zone}" "$dir" "${name:-root}" "$policy"
        done
    )
    printf 'database:\n    storage: %s\n    kasp-db: %s/kasp\n%s\nzone:\n%s\n' \
        "$dir" "$dir" "$policies" "$zones" >"$dir/sign.conf"
    # A second key database: the key whose DS nokey.test's parent publishes.
    printf 'database:\n    storage: %s\n    kasp-db: %s/decoy-kasp\n%s\nzone:\n  - domain: nokey.test\n    dnssec-policy: p13\n' \
        "$dir" "$dir" "$policies" >"$dir/decoy.conf"

    # The unsigned zones.
    printf '*.any A 192.0.2.31\n' | zone_source insecure.test "$dir/signed/insecure.test.zone"
    zone_source unsigned.optout.test "$dir/signed/unsigned.optout.test.zone" </dev/null
    zone_source corp.test "$dir/signed/corp.test.zone" </dev/null

    # The signed children.
    local zone
    for zone in "${!SIGNED[@]}"; do
        case $zone in
        secure.test)
            printf 'to-insecure CNAME www.insecure.test.\nto-bogus CNAME www.bogus.test.\nto-nsec3 CNAME www.nsec3.test.\n'
            ;;
        nsec3.test) printf '*.wild A 192.0.2.22\n' ;;
        wild.test) printf '* A 192.0.2.20\n* TXT "wildcard"\nhost A 192.0.2.21\n' ;;
        optout.test) printf 'unsigned NS ns.nic.test.\n' ;;
        bulk.test) awk -v n="$bulk" 'BEGIN { for (i = 0; i < n; i++) printf "n%x A 192.0.2.200\n", i }' ;;
        esac | zone_source "$zone" "$dir/src/$zone.zone"
        # wild.test's records sit below the apex only.
        [[ $zone == wild.test ]] && sed -i '/^www A /d' "$dir/src/$zone.zone"
        if [[ $zone == expired.test ]]; then
            sign "$zone" -t $((now - 10 * 86400))
        else
            sign "$zone"
        fi
    done

    # test.: delegations (with DS where the child is signed, altered where the case says so).
    {
        printf 'ns.nic A %s\n' "$NS_ADDRESS"
        for zone in "${!SIGNED[@]}" insecure.test; do
            printf '%s. NS ns.nic.test.\n' "$zone"
        done
        for zone in "${!SIGNED[@]}"; do
            case $zone in
            nokey.test)
                keymgr -c "$dir/decoy.conf" nokey.test generate algorithm=13 ksk=yes >/dev/null
                ds_of nokey.test "$dir/decoy.conf"
                ;;
            unknownalg.test) ds_of "$zone" | awk '{ $6 = 100; print }' ;;
            unknowndigest.test) ds_of "$zone" | awk '{ $7 = 100; print }' ;;
            *) ds_of "$zone" ;;
            esac
        done
    } | zone_source test "$dir/src/test.zone"
    sign test
    {
        printf 'test. NS ns.nic.test.\nns.nic.test. A %s\n' "$NS_ADDRESS"
        ds_of test
    } | zone_source . "$dir/src/root.zone"
    sign .

    # The broken cases, after signing.
    sed -i -E 's/^(www\.bogus\.test\.\s+[0-9]+\s+A\s+)192\.0\.2\.50$/\1192.0.2.51/' "$dir/signed/bogus.test.zone"
    grep -qE '^www\.bogus\.test\.\s+[0-9]+\s+A\s+192\.0\.2\.51$' "$dir/signed/bogus.test.zone"
    drop_records "$dir/signed/nosig.test.zone" '$1 == "www.nosig.test." && $3 == "RRSIG" && $4 == "A"'
    drop_records "$dir/signed/nonsec.test.zone" '$3 == "NSEC" || ($3 == "RRSIG" && $4 == "NSEC")'

    # The trust anchor, in the forms each consumer takes.
    ds_of . >"$dir/root.ds"
    awk '$1 == "." && $3 == "DNSKEY" && $4 == 257 { $1 = "."; print $1, $2, "IN", $3, $4, $5, $6, $7 }' \
        "$dir/signed/root.zone" >"$dir/root.dnskey"
    [[ -s $dir/root.ds && -s $dir/root.dnskey ]]
    awk 'BEGIN { print "trust-anchors {" } { printf "    \".\" static-ds %s %s %s \"%s\";\n", $5, $6, $7, $8 }
        END { print "};" }' "$dir/root.ds" >"$dir/delv.conf"

    {
        echo ". root.zone"
        for zone in test "${!SIGNED[@]}" "${UNSIGNED[@]}"; do
            echo "$zone. $zone.zone"
        done
    } >"$dir/zones"
    rm -rf "$dir/src" "$dir/kasp" "$dir/decoy-kasp" "$dir/sign.conf" "$dir/decoy.conf" "$dir/sign.log"
    chmod -R a+rX "$dir"
}

knot_conf() {
    local dir=$1 listen=$2 run=$3
    [[ -f $dir/zones ]] || { echo "world.sh: no world in $dir" >&2; exit 1; }
    cat <<EOF
server:
    listen: $listen
    rundir: $run
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: $run
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: $dir/signed
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
EOF
    local name file
    while read -r name file; do
        printf '  - domain: %s\n    file: %s\n' "$name" "$file"
    done <"$dir/zones"
}

case ${1:-} in
build) [[ $# == 2 || $# == 3 ]] || usage; build "$2" "${3:-0}" ;;
knot-conf) [[ $# == 4 ]] || usage; knot_conf "$2" "$3" "$4" ;;
*) usage ;;
esac
