//! The server certificate and key as configuration: listeners without them, one without the
//! other, a key that is not the certificate's and a file that cannot be read are each a
//! configuration error naming the key or file (exit 78 from `check-config` and from the
//! daemon started without socket activation); relative paths are read from
//! `$CREDENTIALS_DIRECTORY`, where systemd's `LoadCredential=` puts them, and `check-config`
//! says so, or, run without it as the unit's `ExecReload=` runs it, that it did not read them.

use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::support::client::{assert_a, make_query};
use crate::support::encrypted::{DotClient, ServerFiles, loopback_listener};
use crate::support::proxy::{Proxy, ProxyConfig, run_binary};
use crate::support::upstream::{FakeUpstream, issue_server_cert, open_temp_dir, write_file};

const EX_CONFIG: i32 = 78;

/// `check-config` of `toml` (with `env`); its output.
async fn check(toml: &str, env: &[(&str, &str)]) -> crate::support::proxy::RunOutput {
    let dir = open_temp_dir();
    let file = dir.path().join("dns-proxy.toml");
    write_file(&file, toml, 0o644);
    let file = file.display().to_string();
    run_binary(&["check-config", "--config", &file], env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_unusable_pair_is_a_configuration_error_naming_it() {
    let files = ServerFiles::new(1);
    let [cert_line, key_line] = files.config_lines();
    let out = check("listen_tls = [\"127.0.0.1\"]\n", &[]).await;
    assert_eq!(out.code(), Some(EX_CONFIG), "{out}");
    assert!(out.stderr.contains("\"tls_certificate\""), "{out}");
    let out = check(&format!("{cert_line}\n"), &[]).await;
    assert_eq!(out.code(), Some(EX_CONFIG), "{out}");
    assert!(out.stderr.contains("\"tls_key\""), "{out}");

    // A key that is not the certificate's: the key file is named.
    let stranger = issue_server_cert(&["other.test"], 9);
    let stranger_key = files.dir.path().join("stranger.key");
    write_file(&stranger_key, &stranger.key_pem, 0o600);
    let mismatch = format!(
        "listen_https = [\"127.0.0.1:8443\"]\n{cert_line}\ntls_key = {:?}\n",
        stranger_key.display().to_string()
    );
    let out = check(&mismatch, &[]).await;
    assert_eq!(out.code(), Some(EX_CONFIG), "{out}");
    assert!(
        out.stderr.contains(&stranger_key.display().to_string()),
        "{out}"
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");

    // A certificate file that is not there is named too.
    let missing = files.dir.path().join("missing.pem");
    let out = check(
        &format!(
            "tls_certificate = {:?}\n{key_line}\n",
            missing.display().to_string()
        ),
        &[],
    )
    .await;
    assert_eq!(out.code(), Some(EX_CONFIG), "{out}");
    assert!(out.stderr.contains(&missing.display().to_string()), "{out}");

    // The daemon refuses to start on it, without socket activation.
    let up = FakeUpstream::start().await;
    let config = ProxyConfig::new(up.spec())
        .extra(&format!("listen_tls = [\"127.0.0.1:0\"]\n{cert_line}"))
        .extra(&format!(
            "tls_key = {:?}",
            stranger_key.display().to_string()
        ));
    let mut proxy = Proxy::builder(&config)
        .listen_args(vec!["127.0.0.1:0".parse().unwrap()])
        .spawn()
        .await;
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(EX_CONFIG));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_paths_are_read_from_the_credentials_directory() {
    // As LoadCredential= leaves them: a private directory holding the files under the
    // credentials' names.
    let files = ServerFiles::new(1);
    let credentials = open_temp_dir();
    write_file(
        &credentials.path().join("tls.crt"),
        &files.cert.cert_pem,
        0o400,
    );
    write_file(
        &credentials.path().join("tls.key"),
        &files.cert.key_pem,
        0o400,
    );
    let directory = credentials.path().display().to_string();
    let toml = "tls_certificate = \"tls.crt\"\ntls_key = \"tls.key\"\n";

    let out = check(toml, &[("CREDENTIALS_DIRECTORY", &directory)]).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("tls_key = \"tls.key\""), "{out}");
    let read_from = format!("# tls_key is read from {directory}/tls.key ($CREDENTIALS_DIRECTORY)");
    assert!(out.stdout.lines().any(|line| line == read_from), "{out}");
    // Without the directory, as the unit's ExecReload= runs it, check-config checks the rest
    // and says it did not read them; the daemon itself refuses to start without them.
    let out = check(toml, &[]).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(
        out.stdout
            .contains("# tls_key not read here: a relative path"),
        "{out}"
    );
    let up = FakeUpstream::start().await;
    let config = ProxyConfig::new(up.spec())
        .extra("listen_tls = [\"127.0.0.1:0\"]")
        .extra("tls_certificate = \"tls.crt\"")
        .extra("tls_key = \"tls.key\"");
    let mut proxy = Proxy::builder(&config)
        .listen_args(vec!["127.0.0.1:0".parse().unwrap()])
        .spawn()
        .await;
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(EX_CONFIG));

    // The daemon serves the certificate it read from there.
    let up = FakeUpstream::start().await;
    let tls = loopback_listener();
    let address = tls.local_addr().unwrap();
    let config = ProxyConfig::new(up.spec())
        .extra("tls_certificate = \"tls.crt\"")
        .extra("tls_key = \"tls.key\"");
    let _proxy = Proxy::builder(&config)
        .named_socket("dns-tls", tls)
        .env("CREDENTIALS_DIRECTORY", &directory)
        .start()
        .await;
    let mut client = DotClient::connect(address).await;
    assert_eq!(client.server_certificate(), files.cert.cert_der);
    let answer = client
        .exchange(&make_query(
            "credentials.example.",
            RecordType::A,
            None,
            false,
        ))
        .await;
    assert_a(&answer, up.answer());
}
