#!/usr/bin/env bash
# The upgrade test: builds and installs the previous release from its frozen source
# (tests/ops/releases/voucher_ext-0.1.0.tar.gz = `git archive` of commit 6573bf5, so a shallow
# clone runs it too; VOUCHER_UPGRADE_FROM=<commit> builds that commit from git history instead),
# creates a database with data in every table on it
# (tests/ops/populate.sql), installs the current build, checks that the old SQL definitions still
# work against the new library, runs ALTER EXTENSION voucher_ext UPDATE, then checks that
#   (a) the data is intact (tests/ops/counts.sql before = after) and usable (tests/ops/check.sql:
#       verify_audit, redemptions, limits, replays, sealing), and
#   (b) the upgraded schema equals a fresh install of the current version, object by object
#       (tests/ops/schema.sql), printing the difference otherwise.
# Leaves the current build installed. Uses its own cluster (port VOUCHER_PORT_BASE + 8).
# The old version is built in debug into the same target directory as the current one, so only
# the extension crate itself is compiled again (the dependencies are shared).
#   tests/ops/upgrade.sh
source "$(dirname "$0")/../../scripts/common.sh"
here="$ROOT/tests/ops"
from=${VOUCHER_UPGRADE_FROM:-}
release="$here/releases/voucher_ext-0.1.0.tar.gz"
port=$(( ${VOUCHER_PORT_BASE:-54360} + 8 ))
bin=$(pg_bindir)
work="$ROOT/target/ops-upgrade"
q() { "$bin/psql" -X -q -v ON_ERROR_STOP=1 -U postgres -h "$host" -p "$port" "$@"; }
t0=$(now)

if [ -n "$from" ]; then
    git -C "$ROOT" cat-file -e "$from^{commit}" 2>/dev/null \
        || die "commit $from (VOUCHER_UPGRADE_FROM) is not in this clone: fetch the full history (git fetch --unshallow)"
    old="$work/src-$from"
    if [ ! -f "$old/.complete" ]; then
        rm -rf "$old" && mkdir -p "$old"
        git -C "$ROOT" archive "$from" | tar -x -C "$old"
        touch "$old/.complete"
    fi
else
    [ -f "$release" ] || die "$release (the frozen source of the previous release) is missing"
    from="tests/ops/releases"
    old="$work/src-release"
    stamp=$(sha256sum <"$release")
    if [ "$(cat "$old/.complete" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$old" && mkdir -p "$old"
        tar -xzf "$release" -C "$old"
        echo "$stamp" >"$old/.complete"
    fi
fi
mkdir -p "$work"
old_version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$old/Cargo.toml" | head -1)
new_version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
log "   building and installing voucher_ext $old_version ($from)"
args=(--pg-config "$PG_CONFIG")
if ! is_root && [ ! -w "$("$PG_CONFIG" --pkglibdir)" ]; then args+=(--sudo); fi
# Both versions share the target directory (so the dependencies are compiled once) and the
# library's file name in it, where cargo leaves the one it built last; a build it finds fresh
# would leave the other version's file there. Touching the crate root makes each build its own.
touch "$old/src/lib.rs"
(cd "$old" && CARGO_TARGET_DIR="$ROOT/target" cargo pgrx install "${args[@]}") >"$work/install-old.log" 2>&1 \
    || { tail -50 "$work/install-old.log"; die "building $old_version failed"; }
log "   old version installed in $(elapsed "$t0")"
so="$("$PG_CONFIG" --pkglibdir)/voucher_ext.so"
old_so=$(sha256sum <"$so")

"$ROOT/scripts/cluster.sh" start ops-upgrade "$port" fsync=off
trap '"$ROOT/scripts/cluster.sh" stop ops-upgrade' EXIT
host="$(cluster_base)/ops-upgrade"
q -d postgres -c "CREATE DATABASE voucher_upgraded" -c "CREATE DATABASE voucher_fresh"
q -d voucher_upgraded -c "CREATE EXTENSION voucher_ext"
v=$(q -d voucher_upgraded -At -c "SELECT extversion FROM pg_extension WHERE extname = 'voucher_ext'")
[ "$v" = "$old_version" ] || die "CREATE EXTENSION made version $v, expected $old_version"
out=$(q -d voucher_upgraded -At -f "$here/populate.sql")
key_a=$(sed -n 's/^key_a=//p' <<<"$out")
key_b=$(sed -n 's/^key_b=//p' <<<"$out")
# VOUCHER_UPGRADE_ROWS=N adds N customers with e-mail, name and metadata to tenant a (0.1.0 keeps
# them in plaintext), to time the encryption the update does
rows=${VOUCHER_UPGRADE_ROWS:-0}
if [ "$rows" -gt 0 ]; then
    q -d voucher_upgraded -At -c "BEGIN" -c "SELECT voucher.authenticate('$key_a') IS NOT NULL" \
        -c "SELECT count(voucher.upsert_customer('bulk-' || i, 'bulk' || i || '@example.com',
                                                  'Name ' || i, jsonb_build_object('n', i)))
              FROM generate_series(1, $rows) i" -c "COMMIT" >/dev/null
    log "   added $rows customers on $old_version"
fi
before=$(q -d voucher_upgraded -At -f "$here/counts.sql")
if grep -E ' 0$' <<<"$before"; then die "populate.sql left the tables above empty on $old_version"; fi

# No backend holds the old library now (it is not preloaded and the sessions above ended), so the
# cluster keeps running while the new one is installed; then it restarts with the new one
# preloaded, as a DBA would.
log "   installing the current build ($new_version)"
t=$(now)
touch "$ROOT/src/lib.rs"
"$ROOT/scripts/install.sh"
log "   current version installed in $(elapsed "$t")"
[ "$(sha256sum <"$so")" != "$old_so" ] || die "the install left the old version's library in place"
[ -f "$("$PG_CONFIG" --sharedir)/extension/voucher_ext--$old_version--$new_version.sql" ] \
    || die "no upgrade script voucher_ext--$old_version--$new_version.sql was installed"
as_pg "$bin/pg_ctl" -D "$host/data" -l "$host/server.log" -w restart -m fast \
    -o "-p $port -k $host -c listen_addresses='' -c fsync=off -c shared_preload_libraries=voucher_ext -c voucher.seal_interval=0" \
    >/dev/null || { tail -20 "$host/server.log"; die "restart with the new library failed"; }

# before the update: the old SQL definitions of functions whose C signature did not change run
# on the new library (validate and redeem gained an argument in 0.2.0: their 0.1.0 definitions
# fail until the update replaces them; the README says to update right after the install)
q -d voucher_upgraded -At \
    -c "BEGIN" -c "SELECT voucher.authenticate('$key_a') IS NOT NULL" \
    -c "SELECT ok OR (problem IS NULL) FROM voucher.verify_audit()" \
    -c "COMMIT" >/dev/null || die "the $old_version schema does not work with the new library"

# control for the plaintext scan after the update: the restart's checkpoint wrote 0.1.0's
# plaintext e-mail and metadata into the database's files
dboid=$(q -d voucher_upgraded -At -c "SELECT oid FROM pg_database WHERE datname = current_database()")
for s in one@example.com ann@example.org; do
    as_pg grep -rqaF -e "$s" "$host/data/base/$dboid" \
        || die "control: $s not found in the $old_version database's files, the scan below would prove nothing"
done

t=$(date +%s%N)
q -d voucher_upgraded -c "ALTER EXTENSION voucher_ext UPDATE"
update_ms=$(( ($(date +%s%N) - t) / 1000000 ))
log "   ALTER EXTENSION voucher_ext UPDATE: $update_ms ms for $(awk '$1 == "customer" { c = $2 } $1 == "redemption" { r = $2 } END { print c " customers, " r " redemptions" }' <<<"$before")"
v=$(q -d voucher_upgraded -At -c "SELECT extversion FROM pg_extension WHERE extname = 'voucher_ext'")
[ "$v" = "$new_version" ] || die "ALTER EXTENSION UPDATE left version $v, expected $new_version"

# every table and sequence keeps its count and value; tables the upgrade adds start empty, but
# for the keys the encryption of the 0.1.0 plaintext made: two per tenant
after=$(q -d voucher_upgraded -At -f "$here/counts.sql")
tenants=$(awk '$1 == "tenant" { print $2 }' <<<"$before")
customers=$(awk '$1 == "customer" { print $2 }' <<<"$before")
changed=$(awk -v keys=$(( 2 * tenants )) '
               NR == FNR { b[$1] = $2; next }
               ($1 in b) { if (b[$1] != $2) print "changed: " $0 " (was " b[$1] ")"; delete b[$1]; next }
               $1 == "tenant_key" || $1 == "tenant_key_id_seq" { if ($2 != keys) print "not " keys " keys: " $0; next }
               $2 != 0 { print "new, not empty: " $0 }
               END { for (k in b) print "missing: " k }' <(echo "$before") <(echo "$after"))
[ -z "$changed" ] || { echo "$changed"; die "the upgrade changed row counts or sequence values (above)"; }
# and every customer its own key (audit_key), wrapped under the data key of its row
nokey=$(q -d voucher_upgraded -At -c "SELECT count(*) FILTER (WHERE audit_key IS NULL
                                                   OR substr(audit_key, 2, 4) <> int4send(key_id))
                                        || '/' || count(*) FROM voucher.customer")
[ "$nokey" = "0/$customers" ] || die "customers without their own key after the upgrade (without/all): $nokey"
q -d voucher_upgraded -v key_a="$key_a" -v key_b="$key_b" -f "$here/check.sql" >/dev/null \
    || die "the upgraded data failed tests/ops/check.sql (above)"

# no plaintext of the 0.1.0 personal data is left in the database's files (the rewritten tables'
# old files are removed by the next checkpoint; the WAL still has them, README "Upgrading")
q -d voucher_upgraded -c "CHECKPOINT"
leaks=$(as_pg grep -rlaF -e 'one@example.com' -e 'ann@example.org' "$host/data/base/$dboid" || true)
[ -z "$leaks" ] || die "plaintext personal data of $old_version left in the upgraded database's files: $leaks"

q -d voucher_fresh -c "CREATE EXTENSION voucher_ext"
q -d voucher_upgraded -At -f "$here/schema.sql" >"$work/schema-upgraded.txt"
q -d voucher_fresh -At -f "$here/schema.sql" >"$work/schema-fresh.txt"
if ! diff -u "$work/schema-fresh.txt" "$work/schema-upgraded.txt" >"$work/schema.diff"; then
    cat "$work/schema.diff"
    die "the upgraded schema differs from a fresh install of $new_version (diff above: - fresh, + upgraded; sql/upgrade/voucher_ext--$old_version--$new_version.sql lacks it)"
fi
# the migration function exists only inside the update; declared by hand and called outside it,
# even by a superuser, it refuses (42501) and changes nothing
q -d voucher_upgraded -c "CREATE FUNCTION public.migrate_outside() RETURNS bigint LANGUAGE c
                          AS '\$libdir/voucher_ext', 'migrate_plaintext_wrapper'"
if q -d voucher_upgraded -v VERBOSITY=verbose -c "SELECT public.migrate_outside()" \
        >/dev/null 2>"$work/migrate-outside.txt"; then
    die "voucher._crypto_migrate_plaintext ran outside ALTER EXTENSION UPDATE"
fi
grep -q 'ERROR:  42501: voucher_ext: _crypto_migrate_plaintext runs only inside ALTER EXTENSION' \
    "$work/migrate-outside.txt" || { cat "$work/migrate-outside.txt"; die "the migration function refused with an unexpected error"; }
q -d voucher_upgraded -c "DROP FUNCTION public.migrate_outside()"
log "   $old_version -> $new_version: data intact, schema equal to a fresh install ($(wc -l <"$work/schema-fresh.txt") catalog lines), $(elapsed "$t0") in all"
