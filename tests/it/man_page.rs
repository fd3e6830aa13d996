//! The manual pages match the program. The configuration keys are taken from the real binary:
//! the TOML that `check-config` prints for a configuration that sets every optional
//! `[[upstream]]` field, and the lists of valid keys it gives when it refuses an unknown one.
//! Every such key must be a `.TP` item of the KEYS section of man/dns-proxy.toml.5, and that
//! section must document no other key. Likewise every option in `--help` must be a `.TP` item
//! of the OPTIONS section of man/dns-proxy.8 and every command one of its COMMANDS section,
//! and nothing else.
//!
//! Convention of the pages: an item's tag is the key in bold (`.B timeout`); the fields of an
//! upstream are `upstream.<field>` (`.B upstream.ca_file`) and the table itself `[[upstream]]`;
//! likewise `forward_zone.zones` and `[[forward_zone.upstream]]`, whose fields are the same as
//! an upstream's and documented once, as `upstream.<field>`; and the fields of a plain table
//! such as `[metrics]` are `metrics.<field>`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use figment::providers::{Format as _, Toml};
use figment::value::{Dict, Value};

use crate::support::proxy::run_binary;
use crate::support::upstream::{ca_pem, issue_cert, open_temp_dir, spki_pin, write_file};

const EX_CONFIG: i32 = 78;
/// The array of tables that holds the upstreams; its fields are named `upstream.<field>`.
const UPSTREAM: &str = "upstream";
/// The array of tables of split DNS; its upstreams have the fields of `upstream`.
const FORWARD_ZONE: &str = "forward_zone";
/// The plain tables, each with a body that is valid but for the key `zz_not_a_key`.
const TABLES: [(&str, &str); 1] = [("metrics", "listen = \"127.0.0.1:9153\"\n")];

fn man_page(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The words of the tags of the `.TP`/`.TQ` items in section `section` of a man page, with
/// roff escapes, font changes, quotes and the brackets of `[table]` and `[[table]]` removed.
fn documented(page: &str, section: &str) -> BTreeSet<String> {
    tags(page, section).into_iter().flatten().collect()
}

/// The words of each `.TP`/`.TQ` item's tag in section `section`, as [`documented`] reads them.
fn tags(page: &str, section: &str) -> Vec<Vec<String>> {
    let heading = format!(".SH {section}");
    let mut lines = page
        .lines()
        .skip_while(|l| l.trim() != heading)
        .skip(1)
        .take_while(|l| !l.starts_with(".SH"));
    let mut tags = Vec::new();
    while let Some(line) = lines.next() {
        if line.trim() != ".TP" && line.trim() != ".TQ" {
            continue;
        }
        let Some(tag) = lines.next() else { break };
        // Drop the macro (`.B`, `.BR`, `.BI`, …); the rest is the tag text.
        let text = match tag.split_once(' ') {
            Some((macro_name, rest)) if macro_name.starts_with('.') => rest,
            _ => tag,
        };
        let text = text
            .replace("\\-", "-")
            .replace("\\&", "")
            .replace("\\fB", "")
            .replace("\\fI", "")
            .replace("\\fR", "")
            .replace("\\fP", "")
            .replace('"', "");
        let words = text
            .split([' ', ','])
            .map(|word| word.trim_start_matches('[').trim_end_matches(']'))
            .filter(|word| !word.is_empty())
            .map(str::to_string)
            .collect();
        tags.push(words);
    }
    tags
}

/// Keys of a parsed configuration: top-level keys, and `table.field` for every field of a
/// table or of an array of tables (as well as the table's own name), at any depth; a forward
/// zone's upstream fields are counted as the upstream fields they are.
fn keys_of(dict: &Dict) -> BTreeSet<String> {
    fn collect(prefix: &str, dict: &Dict, keys: &mut BTreeSet<String>) {
        for (key, value) in dict {
            let path = normalize(&format!("{prefix}{key}"));
            keys.insert(path.clone());
            let tables = match value {
                Value::Array(_, items) => items.iter().collect(),
                table @ Value::Dict(..) => vec![table],
                _ => Vec::new(),
            };
            for table in tables {
                if let Value::Dict(_, table) = table {
                    collect(&format!("{path}."), table, keys);
                }
            }
        }
    }
    let mut keys = BTreeSet::new();
    collect("", dict, &mut keys);
    keys
}

/// `forward_zone.upstream.address` → `upstream.address`; `forward_zone.upstream` stays.
fn normalize(key: &str) -> String {
    let nested = format!("{FORWARD_ZONE}.{UPSTREAM}.");
    match key.strip_prefix(&nested) {
        Some(field) => format!("{UPSTREAM}.{field}"),
        None => key.to_string(),
    }
}

/// A temp dir holding the test CA and a configuration with `body` as its text.
fn config_file(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = open_temp_dir();
    let path = dir.path().join("dns-proxy.toml");
    write_file(&path, body, 0o644);
    (dir, path)
}

/// The keys in the TOML that `check-config` prints for a configuration with every table,
/// one upstream that sets every optional field (a real CA file, a real pin) and the optional
/// top-level keys (a real certificate and key), so that none is left out.
async fn printed_keys() -> BTreeSet<String> {
    let dir = open_temp_dir();
    let ca = dir.path().join("ca.pem");
    write_file(&ca, ca_pem(), 0o644);
    let server = issue_cert("dns.test", false);
    let pin = spki_pin(&server.spki_der);
    let (cert_file, key_file) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    write_file(&cert_file, &server.cert_pem, 0o644);
    write_file(&key_file, &server.key_pem, 0o600);
    let path = dir.path().join("dns-proxy.toml");
    let mut body = format!(
        "tls_certificate = \"{}\"\ntls_key = \"{}\"\n",
        cert_file.display(),
        key_file.display()
    );
    for (table, fields) in TABLES {
        body.push_str(&format!("[{table}]\n{fields}"));
    }
    body.push_str(&format!(
        "[[upstream]]\naddress = \"127.0.0.1:8853\"\ntls_name = \"dns.test\"\nca_file = \"{}\"\npin_sha256 = [\"{pin}\"]\n\
         [[upstream]]\nurl = \"https://dns.test/dns-query\"\naddress = \"127.0.0.1\"\n\
         [[forward_zone]]\nzones = [\"corp.example\"]\n\
         [[forward_zone.upstream]]\naddress = \"10.0.0.2\"\nprotocol = \"udp\"\n",
        ca.display()
    ));
    write_file(&path, &body, 0o644);
    let out = run_binary(
        &["check-config", "--config", path.to_str().expect("path")],
        &[],
    )
    .await;
    assert_eq!(out.code(), Some(0), "check-config failed:\n{out}");
    let dict = Toml::from_str::<Dict>(&out.stdout)
        .unwrap_or_else(|e| panic!("check-config printed no valid TOML ({e}):\n{out}"));
    let keys = keys_of(&dict);
    for field in ["address", "protocol", "tls_name", "ca_file", "pin_sha256"] {
        assert!(
            keys.contains(&format!("{UPSTREAM}.{field}")),
            "check-config did not print {UPSTREAM}.{field}:\n{out}"
        );
    }
    for (table, _) in TABLES {
        assert!(
            keys.iter().any(|key| key.starts_with(&format!("{table}."))),
            "check-config did not print the [{table}] table:\n{out}"
        );
    }
    keys
}

/// The keys the binary lists as valid when `body` holds the unknown key `zz_not_a_key`.
async fn valid_keys_listed(body: &str) -> Vec<String> {
    let (_dir, path) = config_file(body);
    let out = run_binary(
        &["check-config", "--config", path.to_str().expect("path")],
        &[],
    )
    .await;
    assert_eq!(out.code(), Some(EX_CONFIG), "unknown key accepted:\n{out}");
    let list = out
        .stderr
        .split_once("expected one of: ")
        .and_then(|(_, rest)| rest.rsplit_once(')'))
        .map(|(list, _)| list)
        .unwrap_or_else(|| panic!("no list of valid keys in the error:\n{out}"));
    list.split(',').map(|key| key.trim().to_string()).collect()
}

/// Every key the configuration accepts, as the binary's own parser lists them.
async fn accepted_keys() -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = valid_keys_listed("zz_not_a_key = 1\n")
        .await
        .into_iter()
        .collect();
    let fields =
        valid_keys_listed("[[upstream]]\naddress = \"127.0.0.1\"\nzz_not_a_key = 1\n").await;
    keys.extend(fields.iter().map(|field| format!("{UPSTREAM}.{field}")));
    let zone = "[[forward_zone]]\nzones = [\"corp.example\"]\n";
    let zone_fields = valid_keys_listed(&format!("{zone}zz_not_a_key = 1\n")).await;
    keys.extend(
        zone_fields
            .iter()
            .map(|field| format!("{FORWARD_ZONE}.{field}")),
    );
    let zone_upstream =
        format!("{zone}[[forward_zone.upstream]]\naddress = \"10.0.0.2\"\nzz_not_a_key = 1\n");
    let zone_upstream_fields = valid_keys_listed(&zone_upstream).await;
    keys.extend(
        zone_upstream_fields
            .iter()
            .map(|field| normalize(&format!("{FORWARD_ZONE}.{UPSTREAM}.{field}"))),
    );
    for (table, body) in TABLES {
        let fields = valid_keys_listed(&format!("[{table}]\n{body}zz_not_a_key = 1\n")).await;
        keys.extend(fields.iter().map(|field| format!("{table}.{field}")));
    }
    for table in TABLES
        .map(|(table, _)| table)
        .into_iter()
        .chain([UPSTREAM, FORWARD_ZONE])
    {
        assert!(
            keys.contains(table),
            "the binary no longer has `{table}` tables; update this test: {keys:?}"
        );
    }
    keys
}

fn listed(keys: &BTreeSet<String>) -> String {
    keys.iter().cloned().collect::<Vec<_>>().join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_prints_every_key_the_parser_accepts() {
    // Guards the two ways the other tests learn the keys: they must agree.
    let printed = printed_keys().await;
    let accepted = accepted_keys().await;
    let only_printed: BTreeSet<String> = printed.difference(&accepted).cloned().collect();
    let only_accepted: BTreeSet<String> = accepted.difference(&printed).cloned().collect();
    assert!(
        only_printed.is_empty() && only_accepted.is_empty(),
        "check-config and the parser disagree on the keys; printed but not accepted: [{}], \
         accepted but not printed: [{}]",
        listed(&only_printed),
        listed(&only_accepted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_config_key_is_documented() {
    let mut keys = printed_keys().await;
    keys.extend(accepted_keys().await);
    let documented = documented(&man_page("dns-proxy.toml.5"), "KEYS");
    let missing: BTreeSet<String> = keys.difference(&documented).cloned().collect();
    assert!(
        missing.is_empty(),
        "man/dns-proxy.toml.5 does not document these keys as `.TP` items of its KEYS \
         section (tag `.B key`, or `.B {UPSTREAM}.field` for an upstream field): {}",
        listed(&missing)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn man_page_documents_only_accepted_keys() {
    let mut keys = printed_keys().await;
    keys.extend(accepted_keys().await);
    let documented = documented(&man_page("dns-proxy.toml.5"), "KEYS");
    assert!(
        !documented.is_empty(),
        "man/dns-proxy.toml.5 has no `.TP` items in a KEYS section"
    );
    let unknown: BTreeSet<String> = documented.difference(&keys).cloned().collect();
    assert!(
        unknown.is_empty(),
        "man/dns-proxy.toml.5 documents keys the configuration refuses: {}",
        listed(&unknown)
    );
}

/// The options and commands that `--help` lists: `-c`, `--config`, …, `check-config`.
async fn help_options() -> BTreeSet<String> {
    let out = run_binary(&["--help"], &[]).await;
    assert_eq!(out.code(), Some(0), "{out}");
    let mut options = BTreeSet::new();
    let mut section = "";
    for line in out.stdout.lines() {
        if !line.starts_with(' ') {
            section = line.trim();
            continue;
        }
        let words = line.split_whitespace().map(|w| w.trim_end_matches(','));
        // A line indented deeper continues the description above it.
        let continued = line.starts_with("   ");
        match section {
            "Commands:" if continued => {}
            "Commands:" => options.extend(
                words
                    .take(1)
                    .filter(|w| !w.starts_with('('))
                    .map(str::to_string),
            ),
            "Options:" => {
                options.extend(words.take_while(|w| w.starts_with('-')).map(str::to_string))
            }
            _ => {}
        }
    }
    assert!(
        options.contains("--config") && options.contains("check-config"),
        "cannot read the options from --help; update this test:\n{out}"
    );
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_option_is_documented_and_no_other() {
    let options = help_options().await;
    let page = man_page("dns-proxy.8");
    // Tag words that are option names, not value names such as `file`; and each command, the
    // first word of an item of COMMANDS.
    let mut documented: BTreeSet<String> = documented(&page, "OPTIONS")
        .into_iter()
        .filter(|w| w.starts_with('-'))
        .collect();
    documented.extend(
        tags(&page, "COMMANDS")
            .into_iter()
            .filter_map(|tag| tag.into_iter().next()),
    );
    let missing: BTreeSet<String> = options.difference(&documented).cloned().collect();
    assert!(
        missing.is_empty(),
        "man/dns-proxy.8 does not document these options and commands of --help as `.TP` \
         items of its OPTIONS and COMMANDS sections: {}",
        listed(&missing)
    );
    let unknown: BTreeSet<String> = documented.difference(&options).cloned().collect();
    assert!(
        unknown.is_empty(),
        "man/dns-proxy.8 documents options that --help does not list: {}",
        listed(&unknown)
    );
}
