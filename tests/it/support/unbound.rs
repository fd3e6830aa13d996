//! unbound as a real encrypted upstream: DNS over HTTPS (`https-port`, HTTP/2 through Debian's
//! nghttp2 build) and, when asked, DNS over TLS, with a certificate from the test CA for
//! `doh.test` and 127.0.0.1, and a static `test.` zone. It can be killed and started again on
//! the same ports; a [`PlainServer`] answers plain DNS for an upstream's name and logs every
//! question it is asked, as a bootstrap server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tempfile::TempDir;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::proxy::{Collector, collect_lines, free_port};
use super::upstream::{IssuedCert, ca_pem, issue_server_cert, open_temp_dir, write_file};

/// The name in unbound's certificate (with the IP address 127.0.0.1).
pub const DOH_NAME: &str = "doh.test";
/// The path unbound answers DNS over HTTPS on.
pub const DOH_PATH: &str = "/dns-query";

/// Ports and address unbound serves on.
#[derive(Clone, Copy, Debug)]
pub struct UnboundPorts {
    pub ip: Ipv4Addr,
    pub https: u16,
    /// DNS over TLS too, when set.
    pub tls: Option<u16>,
}

impl UnboundPorts {
    /// DNS over HTTPS on a free port of 127.0.0.1.
    pub fn https_only() -> UnboundPorts {
        UnboundPorts {
            ip: Ipv4Addr::LOCALHOST,
            https: free_port(),
            tls: None,
        }
    }
}

/// A running unbound; killed on drop.
pub struct Unbound {
    pub ports: UnboundPorts,
    dir: TempDir,
    conf: PathBuf,
    child: Option<tokio::process::Child>,
    pub log: Arc<Collector>,
    /// The test CA's certificate, to configure as `ca_file`.
    pub ca_file: PathBuf,
    /// The network namespace it runs in, if not this one.
    netns: Option<String>,
}

impl Unbound {
    pub async fn start(ports: UnboundPorts) -> Unbound {
        Unbound::start_in(ports, None).await
    }

    /// Started in the network namespace `netns` (as `ip netns exec` runs it), if given.
    pub async fn start_in(ports: UnboundPorts, netns: Option<&str>) -> Unbound {
        let dir = open_temp_dir();
        let cert = issue_server_cert(&[DOH_NAME, "127.0.0.1"], 7);
        let ca_file = dir.path().join("ca.pem");
        write_file(&ca_file, ca_pem(), 0o644);
        let mut server = format!("    interface: {}@{}\n", ports.ip, ports.https);
        if let Some(tls) = ports.tls {
            server.push_str(&format!(
                "    interface: {}@{tls}\n    tls-port: {tls}\n",
                ports.ip
            ));
        }
        let conf = write_conf(
            dir.path(),
            &cert,
            &format!(
                r#"{server}    https-port: {https}
    http-endpoint: "{DOH_PATH}"
    num-threads: 1
    module-config: "iterator"
    access-control: 0.0.0.0/0 allow
    local-zone: "test." static
    local-data: "www.test. 60 IN A 192.0.2.53"
    local-data: "mail.test. 60 IN A 192.0.2.54"
remote-control:
    control-enable: no
"#,
                https = ports.https,
            ),
        );
        let mut unbound = Unbound {
            ports,
            dir,
            conf,
            child: None,
            log: Collector::new(),
            ca_file,
            netns: netns.map(str::to_string),
        };
        unbound.spawn().await;
        unbound
    }

    async fn spawn(&mut self) {
        let wait = Duration::from_secs(10);
        let child = spawn(&self.conf, self.netns.as_deref(), &self.log, wait).await;
        self.child = Some(child);
    }

    /// Kills it (SIGKILL: connections are reset, nothing is said).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again on the same ports.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    pub fn https_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ports.ip, self.ports.https))
    }

    /// The `url` of its DNS-over-HTTPS service under `host`.
    pub fn url(&self, host: &str) -> String {
        format!("https://{host}:{}{DOH_PATH}", self.ports.https)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Writes unbound's configuration to `dir`/unbound.conf, and returns that path: in the
/// foreground, no chroot, user, pid file or syslog, IPv4 only, files in `dir`, serving TLS with
/// `cert` (key and certificate written to `dir`); then `rest`: more `server:` keys (indented)
/// and the other sections.
pub fn write_conf(dir: &Path, cert: &IssuedCert, rest: &str) -> PathBuf {
    let key_file = dir.join("server.key");
    let pem_file = dir.join("server.pem");
    write_file(&key_file, &cert.key_pem, 0o600);
    write_file(&pem_file, &cert.cert_pem, 0o644);
    let text = format!(
        r#"server:
    tls-service-key: "{key}"
    tls-service-pem: "{pem}"
    do-daemonize: no
    chroot: ""
    username: ""
    pidfile: ""
    directory: "{dir}"
    use-syslog: no
    logfile: ""
    verbosity: 1
    do-ip6: no
{rest}"#,
        key = key_file.display(),
        pem = pem_file.display(),
        dir = dir.display(),
    );
    let conf = dir.join("unbound.conf");
    write_file(&conf, &text, 0o644);
    conf
}

/// Starts unbound on `conf` (in the network namespace `netns`, as `ip netns exec` runs it, if
/// given), its stderr collected in `log`, and waits up to `wait` for it to serve; killed when
/// the returned child is dropped.
pub async fn spawn(
    conf: &Path,
    netns: Option<&str>,
    log: &Arc<Collector>,
    wait: Duration,
) -> tokio::process::Child {
    let program = super::find_tool("unbound").expect("unbound");
    let mut command = match netns {
        Some(netns) => {
            let mut command = tokio::process::Command::new("ip");
            command.args(["netns", "exec", netns]).arg(program);
            command
        }
        None => tokio::process::Command::new(program),
    };
    command
        .arg("-d")
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("spawn unbound");
    let mark = log.len();
    tokio::spawn(collect_lines(
        child.stderr.take().expect("unbound stderr"),
        log.clone(),
    ));
    let started = log
        .wait(mark, &|l| l.contains("start of service"), wait)
        .await;
    assert!(
        started.is_some(),
        "unbound did not start:\n{}",
        log.lines().join("\n")
    );
    child
}

/// A plain DNS server over UDP answering A and AAAA questions for one name, logging every
/// question it gets; stopped on drop or by [`PlainServer::stop`].
pub struct PlainServer {
    pub addr: SocketAddr,
    asked: Arc<Mutex<Vec<(String, RecordType)>>>,
    task: JoinHandle<()>,
}

impl PlainServer {
    /// Answers `name` with `addresses` (A for IPv4 ones, AAAA for IPv6 ones, TTL `ttl`);
    /// every other name with NXDOMAIN.
    pub async fn start(name: &str, addresses: Vec<IpAddr>, ttl: u32) -> PlainServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("address");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let name = format!("{}.", name.trim_end_matches('.'));
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let Some(question) = query.queries.first().cloned() else {
                    continue;
                };
                let qname = question.name().to_ascii().to_ascii_lowercase();
                log.lock()
                    .unwrap()
                    .push((qname.clone(), question.query_type()));
                let mut response = query.clone();
                response.metadata.message_type = MessageType::Response;
                response.metadata.recursion_available = true;
                if qname == name {
                    for ip in &addresses {
                        let rdata = match (ip, question.query_type()) {
                            (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                            _ => continue,
                        };
                        response.answers.push(Record::from_rdata(
                            question.name().clone(),
                            ttl,
                            rdata,
                        ));
                    }
                } else {
                    response.metadata.response_code = ResponseCode::NXDomain;
                }
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        PlainServer { addr, asked, task }
    }

    /// Every question asked so far: the name (lower case, with the final dot) and type.
    pub fn asked(&self) -> Vec<(String, RecordType)> {
        self.asked.lock().unwrap().clone()
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
