#!/usr/bin/env bash
# Builds Citus v13.2.2 from source and installs it into the PostgreSQL that $PG_CONFIG belongs
# to, unless it is there already. Citus is not packaged for Debian 12; its source tarball is
# vendored beside the repository (../shared/vendor/citus-v13.2.2.tar.gz) or given by
# CITUS_TARBALL=/path/to/citus-v13.2.2.tar.gz. Its sha256 is checked before anything is built.
#
#   scripts/citus.sh          exit 0: Citus is installed (now or before)
#                             exit 3: neither Citus nor its source is here (the caller skips)
#                             other:  the build failed
source "$(dirname "$0")/common.sh"

CITUS_VERSION=13.2.2
CITUS_SHA256=a9ce450f3b31d02a5aa184ae7b4077198f804b4e3bbd5db9858b429df18af714
tarball=${CITUS_TARBALL:-$ROOT/../shared/vendor/citus-v$CITUS_VERSION.tar.gz}

installed() {
    [ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ] &&
        grep -qs "default_version = '13.2-1'" "$("$PG_CONFIG" --sharedir)/extension/citus.control"
}

if installed; then
    exit 0
fi
if [ ! -f "$tarball" ]; then
    log "Citus is not installed and its source is not at $tarball (set CITUS_TARBALL)"
    exit 3
fi
echo "$CITUS_SHA256  $tarball" | sha256sum --check --quiet - \
    || die "$tarball does not have the sha256 of Citus v$CITUS_VERSION"

packages=(liblz4-dev libzstd-dev libkrb5-dev make gcc)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    is_root || die "building Citus needs the Debian packages ${missing[*]} (run as root, or install them)"
    log "installing Debian packages for Citus: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi

build="$ROOT/target/citus-build"
rm -rf "$build" && mkdir -p "$build"
tar -xzf "$tarball" -C "$build"
src=$(find "$build" -mindepth 1 -maxdepth 1 -type d | head -1)
[ -f "$src/configure" ] || die "$tarball does not unpack to a Citus source tree"

# PostgreSQL 15.20 declares have_createdb_privilege() in commands/dbcommands.h; Citus's compat
# header defines a static inline of the same name for PostgreSQL < 16, which no longer compiles.
# Rename Citus's own definition (and its one caller) when the server headers declare it.
if grep -q 'have_createdb_privilege' "$("$PG_CONFIG" --includedir-server)/commands/dbcommands.h"; then
    sed -i 's/^have_createdb_privilege(void)/citus_compat_have_createdb_privilege(void)/' \
        "$src/src/include/pg_version_compat.h"
    sed -i 's/!have_createdb_privilege()/!citus_compat_have_createdb_privilege()/' \
        "$src/src/backend/distributed/commands/serialize_distributed_ddls.c"
    grep -q citus_compat_have_createdb_privilege "$src/src/include/pg_version_compat.h" \
        || die "the have_createdb_privilege rename did not apply: has the Citus source changed?"
fi

log "building Citus v$CITUS_VERSION for $("$PG_CONFIG" --version) (about a minute on 2 cores)"
(
    cd "$src"
    ./configure --without-libcurl PG_CONFIG="$PG_CONFIG" >"$build/configure.log" 2>&1 \
        || { tail -30 "$build/configure.log"; exit 1; }
    make -j2 >"$build/make.log" 2>&1 || { tail -50 "$build/make.log"; exit 1; }
    make install >"$build/install.log" 2>&1 || { tail -30 "$build/install.log"; exit 1; }
) || die "building Citus failed (logs in $build)"
installed || die "Citus was built but is not where $PG_CONFIG looks"
log "Citus v$CITUS_VERSION installed into $("$PG_CONFIG" --pkglibdir)"
