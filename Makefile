# Packages and the system test. `cargo` does everything else.
#
#   make deb           target/pkg/dns-proxy_<version>_<arch>.deb, checked by lintian
#   make rpm           target/pkg/dns-proxy-<version>-1.<arch>.rpm, checked by rpmlint
#   make system-test   both packages installed and run under a real systemd (nspawn)
#
# Both also build from an unpacked release tarball (`git archive`; git must be installed).
# Builds are offline once `cargo fetch` has filled the cargo cache. Both packages ship
# a binary linked against glibc 2.28 by cargo-zigbuild (`pip install cargo-zigbuild ziglang`).

SHELL := /bin/bash
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# A different package version (e.g. `make deb DEB_VERSION=0.1.0+1` to test upgrades).
DEB_VERSION ?= $(VERSION)
PKG := target/pkg
DEB_TREE := target/deb/dns-proxy-$(VERSION)

.PHONY: deb rpm system-test

deb:
	@command -v cargo-zigbuild >/dev/null || { echo "make deb: cargo-zigbuild is missing: pip install cargo-zigbuild ziglang" >&2; exit 1; }
	cargo fetch --locked
	rm -rf $(DEB_TREE) && mkdir -p $(DEB_TREE) $(PKG)
	set -o pipefail; packaging/source-files | xargs -0 -r cp -p --parents -t $(DEB_TREE)
	if [ "$(DEB_VERSION)" != "$(VERSION)" ]; then \
	    { printf 'dns-proxy (%s) unstable; urgency=medium\n\n  * Rebuild.\n\n -- %s  %s\n\n' \
	        "$(DEB_VERSION)" "dns-proxy developers <dev@dns-proxy.invalid>" "$$(date -R)"; \
	      cat $(DEB_TREE)/debian/changelog; } > $(DEB_TREE)/changelog.new; \
	    mv $(DEB_TREE)/changelog.new $(DEB_TREE)/debian/changelog; \
	fi
# SOURCE_DATE_EPOCH from the source's own changelog, also for a rebuild with another
# DEB_VERSION: dpkg-buildpackage would take it from the new entry, and the build scripts of
# ring and mimalloc rerun (recompiling dns-proxy) whenever it changes.
	cd $(DEB_TREE) && SOURCE_DATE_EPOCH=$$(dpkg-parsechangelog -l $(CURDIR)/debian/changelog -S Timestamp) \
	    CARGO_TARGET_DIR=$(CURDIR)/target/deb/cargo dpkg-buildpackage -us -uc -b
	mv target/deb/dns-proxy_$(DEB_VERSION)_*.deb $(PKG)/
	lintian --fail-on error,warning $(PKG)/dns-proxy_$(DEB_VERSION)_*.deb

rpm:
	rpm/build.sh

system-test: deb rpm
	tests/system/run.sh
