#!/usr/bin/env bash
# Builds the dns-proxy RPM from the working tree (`make rpm`; works from any directory):
#   target/pkg/dns-proxy-<version>-<release>.<arch>.rpm
# Makes Source0 (the project's files: tracked ones plus new, not ignored ones, as they are in the
# working tree, so uncommitted edits are included and target/ is not; in a release tarball,
# every file not ignored: packaging/source-files) and Source1 (`cargo vendor`,
# offline when the registry cache has every crate), runs `rpmbuild --with zigbuild` (glibc 2.28
# symbol versions; needs `pip install cargo-zigbuild ziglang`), checks the binary's glibc
# requirement and runs rpmlint when it is installed: any complaint beyond the signature, Packager
# and Group noise of Debian's default profile fails the build (filters: rpm/rpmlint.toml).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
spec=rpm/dns-proxy.spec

for tool in cargo rpmbuild rpm2cpio cpio objdump xz flock; do
    command -v "$tool" >/dev/null || { echo "rpm/build.sh: $tool is not installed" >&2; exit 1; }
done
cargo zigbuild --help >/dev/null 2>&1 ||
    { echo "rpm/build.sh: cargo-zigbuild is missing: pip install cargo-zigbuild ziglang" >&2; exit 1; }

# The spec carries the version (its changelog must match it); Cargo.toml is the reference.
version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n 1)
spec_version=$(sed -n 's/^Version: *//p' "$spec")
if [[ $version != "$spec_version" ]]; then
    echo "rpm/build.sh: Cargo.toml has version $version but $spec has $spec_version;" \
        "update Version: and add a %changelog entry" >&2
    exit 1
fi

top=$repo/target/rpmbuild
mkdir -p "$top"/{SOURCES,BUILD,RPMS,SRPMS,tmp} target/pkg
# One build at a time in target/rpmbuild (make rpm and the system test may overlap).
exec 9>"$top/.lock"
flock 9
name=dns-proxy-$version

# Source0: the working tree's files (not deleted ones), under dns-proxy-<version>/. File times
# are kept so that cargo's incremental build sees unchanged files as unchanged.
packaging/source-files |
    tar --create --gzip --file "$top/SOURCES/$name.tar.gz" --owner=0 --group=0 --numeric-owner \
        --transform "s,^,$name/," --no-recursion --null --files-from=-

# Source1: `cargo vendor`, redone only when Cargo.lock changes (it is 300 MB and slow to xz).
vendor_tar=$top/SOURCES/$name-vendor.tar.xz
lock_sum=$(sha256sum Cargo.lock | cut -d' ' -f1)
if [[ ! -s $vendor_tar || $(cat "$vendor_tar.lock-sha256" 2>/dev/null) != "$lock_sum" ]]; then
    vendor_tmp=$top/tmp/vendor
    rm -rf "$vendor_tmp" "$vendor_tar" "$vendor_tar.lock-sha256"
    mkdir -p "$vendor_tmp"
    if ! CARGO_NET_OFFLINE=true cargo vendor --locked --quiet "$vendor_tmp/vendor" >/dev/null 2>"$top/tmp/vendor.log"; then
        echo "rpm/build.sh: the registry cache lacks some crates; cargo vendor goes online"
        rm -rf "$vendor_tmp/vendor"
        cargo vendor --locked --quiet "$vendor_tmp/vendor" >/dev/null
    fi
    tar --create --directory "$vendor_tmp" --owner=0 --group=0 --numeric-owner --sort=name vendor |
        xz -T0 -3 >"$vendor_tar.part"
    mv "$vendor_tar.part" "$vendor_tar"
    echo "$lock_sum" >"$vendor_tar.lock-sha256"
    rm -rf "$vendor_tmp"
fi

# rpmbuild passes the environment through: cargo keeps its output under target/rpmbuild so that
# the next run is incremental.
export CARGO_TARGET_DIR=$top/cargo-target
rm -f "$top"/RPMS/*/dns-proxy-*.rpm
rpmbuild -bb --nodeps --with zigbuild \
    --define "_topdir $top" \
    --define "_tmppath $top/tmp" \
    "$spec"

rpms=("$top"/RPMS/*/"$name"-*.rpm)
[[ -f ${rpms[0]} ]] || { echo "rpm/build.sh: rpmbuild made no package" >&2; exit 1; }
cp -f "${rpms[@]}" target/pkg/
rpm_file=target/pkg/$(basename "${rpms[0]}")

# The shipped binary must not need glibc symbols newer than 2.28 (packaging/check-glibc, shared
# with the Debian package, prints the highest one and fails above the limit).
extract=$top/tmp/extract
rm -rf "$extract"
mkdir -p "$extract"
(cd "$extract" && rpm2cpio "$repo/$rpm_file" | cpio --quiet -idm ./usr/bin/dns-proxy)
if ! packaging/check-glibc "$extract/usr/bin/dns-proxy"; then
    rm -f "$rpm_file"
    exit 1
fi
rm -rf "$extract"

if command -v rpmlint >/dev/null; then
    echo "rpm/build.sh: rpmlint -c rpm/rpmlint.toml $rpm_file"
    lint=$(rpmlint -c rpm/rpmlint.toml "$rpm_file" 2>&1) || true
    printf '%s\n' "$lint"
    # Debian's default profile always reports these (see rpm/rpmlint.toml); anything else fails.
    if grep -E ': [EW]: ' <<<"$lint" | grep -vE ': [EW]: (no-signature|no-packager-tag|no-group-tag)( |$)'; then
        echo "rpm/build.sh: rpmlint complains about $rpm_file (above)" >&2
        exit 1
    fi
else
    echo "rpm/build.sh: rpmlint is not installed; not checked"
fi
echo "rpm/build.sh: built $rpm_file"
