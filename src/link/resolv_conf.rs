//! The resolv.conf the daemon writes (`resolv_conf`): its loopback listen addresses as
//! `nameserver`s, the links' search domains as `search`, and the options systemd-resolved's
//! stub file carries. `/etc/resolv.conf` may point at it, so that a host's single-label names
//! are qualified with the domains the network hands out.
//!
//! Written whole to a temporary file beside it and renamed over it, so a reader never sees half
//! of one.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The `nameserver` lines glibc reads (`MAXNS`).
const MAX_NAMESERVERS: usize = 3;

/// The file for the daemon listening on `listen` with the links' `search` list.
pub(crate) fn render(listen: &[SocketAddr], search: &[String]) -> String {
    let mut out = String::from(
        "# Written by dns-proxy: its loopback addresses and the search domains of the\n\
         # network links (NetworkManager, resolvectl). Rewritten on every change.\n",
    );
    let mut nameservers: Vec<SocketAddr> = Vec::new();
    for address in listen {
        // resolv.conf has no port: only port 53 can be named.
        if address.ip().is_loopback() && address.port() == 53 && !nameservers.contains(address) {
            nameservers.push(*address);
        }
    }
    if nameservers.is_empty() {
        out.push_str("# (no loopback listen address on port 53 to name)\n");
    }
    for address in nameservers.iter().take(MAX_NAMESERVERS) {
        let _ = writeln!(out, "nameserver {}", address.ip());
    }
    if !search.is_empty() {
        let _ = writeln!(out, "search {}", search.join(" "));
    }
    out.push_str("options edns0 trust-ad\n");
    out
}

/// Replaces `path` with `contents` at once (readable by everyone, as resolv.conf must be).
pub(crate) fn write(path: &Path, contents: &str) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    let temporary = dir.join(format!(
        ".{}.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(contents.as_bytes())?;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_loopback_listeners_on_port_53_and_the_search_list() {
        let listen: Vec<SocketAddr> = ["127.0.0.1:53", "[::1]:53", "127.0.0.1:5300", "10.0.0.1:53"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let search = vec!["corp.example".to_string(), "lab.example".to_string()];
        let text = render(&listen, &search);
        assert!(text.ends_with(
            "nameserver 127.0.0.1\nnameserver ::1\nsearch corp.example lab.example\n\
             options edns0 trust-ad\n"
        ));
        let bare = render(&["127.0.0.1:5300".parse().unwrap()], &[]);
        assert!(bare.contains("# (no loopback listen address on port 53"));
        assert!(!bare.contains("\nsearch "));
    }

    #[test]
    fn writes_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        write(&path, "one\n").unwrap();
        write(&path, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no leftovers"
        );
        assert!(write(&dir.path().join("missing/resolv.conf"), "x").is_err());
    }
}
