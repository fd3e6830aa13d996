//! A private signed DNS world for the DNSSEC tests: `tests/dnssec/world.sh` signs it (Knot DNS's
//! kzonesign and keymgr) into a temporary directory, knotd serves it on a loopback port, and
//! unbound resolves it as a DNS-over-TLS (and DNS-over-HTTPS) upstream, either validating it against the world's own
//! root anchor or as a plain iterator that passes bogus data on. Every process is killed when
//! its handle is dropped; every wait is bounded.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tempfile::TempDir;
use tokio::net::UdpSocket;

use super::proxy::{Collector, UpstreamSpec, collect_lines, free_port};
use super::unbound;
use super::upstream::{DEFAULT_TLS_NAME, ca_pem, issue_cert, open_temp_dir, write_file};
use super::{find_tool, require_tool, within};

/// The script that builds the world.
pub const WORLD_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dnssec/world.sh");

/// The programs the world needs (knotd, its signing tools, unbound); false (skip) when one is
/// missing outside CI, a panic in CI (see [`require_tool`]).
pub fn world_tools_present() -> bool {
    ["knotd", "kzonesign", "keymgr", "unbound"]
        .iter()
        .all(|tool| require_tool(tool))
}

/// A built world: signed zone files and the private root's trust anchor.
pub struct World {
    dir: TempDir,
}

impl World {
    /// Signs the world into a fresh temporary directory (a few seconds, bounded to a minute).
    pub async fn build() -> World {
        let dir = open_temp_dir();
        let world = dir.path().join("world");
        let out = within(
            Duration::from_secs(60),
            "world.sh build",
            tokio::process::Command::new(WORLD_SCRIPT)
                .arg("build")
                .arg(&world)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("run world.sh");
        assert!(
            out.status.success(),
            "world.sh build failed: {:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        World { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("world")
    }

    /// The root's DS records, zone-file syntax (a `trust_anchors` file).
    pub fn anchor_ds(&self) -> PathBuf {
        self.path().join("root.ds")
    }

    /// The root's key-signing DNSKEY record, zone-file syntax (a `trust_anchors` file too).
    pub fn anchor_dnskey(&self) -> PathBuf {
        self.path().join("root.dnskey")
    }

    /// The anchor for `delv -a`.
    pub fn delv_anchor(&self) -> PathBuf {
        self.path().join("delv.conf")
    }

    /// Starts knotd serving the world on a free port of 127.0.0.1 (UDP and TCP).
    pub async fn serve(&self) -> Knot {
        let run = open_temp_dir();
        let port = free_port();
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let out = within(
            Duration::from_secs(20),
            "world.sh knot-conf",
            tokio::process::Command::new(WORLD_SCRIPT)
                .arg("knot-conf")
                .arg(self.path())
                .arg(format!("{}@{}", listen.ip(), listen.port()))
                .arg(run.path())
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("run world.sh knot-conf");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = run.path().join("knot.conf");
        std::fs::write(&conf, &out.stdout).expect("write knot.conf");
        let knotd = find_tool("knotd").expect("knotd");
        let mut child = tokio::process::Command::new(knotd)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn knotd");
        let log = Collector::new();
        tokio::spawn(collect_lines(
            child.stderr.take().expect("knotd stderr"),
            log.clone(),
        ));
        // Ready when it answers for the root with authority.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(answer) = plain_query(listen, ".", RecordType::SOA).await
                && answer.metadata.response_code == ResponseCode::NoError
                && answer.metadata.authoritative
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("knotd exited: {status}\n{}", log.lines().join("\n"));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "knotd does not answer on {listen}:\n{}",
                log.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Knot {
            addr: listen,
            _child: child,
            _run: run,
            log,
        }
    }
}

/// One query over plain UDP, no EDNS; None on timeout (500 ms) or an undecodable answer.
async fn plain_query(server: SocketAddr, name: &str, rtype: RecordType) -> Option<Message> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.ok()?;
    let mut query = Message::new(super::client::next_id(), MessageType::Query, OpCode::Query);
    query.add_query(Query::query(Name::from_ascii(name).ok()?, rtype));
    socket.send_to(&query.to_vec().ok()?, server).await.ok()?;
    let mut buf = vec![0u8; 65_535];
    let (len, _) = tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Message::from_vec(&buf[..len]).ok()
}

/// knotd serving the world; killed on drop.
pub struct Knot {
    /// Where it answers, UDP and TCP.
    pub addr: SocketAddr,
    _child: tokio::process::Child,
    _run: TempDir,
    log: Arc<Collector>,
}

impl Knot {
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lines()
    }
}

/// What the unbound upstream does with DNSSEC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// `module-config: "validator iterator"` with the world's root anchor: bogus answers are
    /// SERVFAIL unless the query has CD=1.
    Validating,
    /// `module-config: "iterator"`: whatever knotd serves reaches the client.
    IteratorOnly,
}

/// unbound forwarding everything to knotd, serving DoT (certificate for
/// [`DEFAULT_TLS_NAME`] from the test CA) and plain DNS; killed on drop.
pub struct WorldResolver {
    /// DNS over TLS.
    pub dot: SocketAddr,
    /// DNS over HTTPS, at [`unbound::DOH_PATH`].
    pub doh: SocketAddr,
    /// Plain DNS (UDP and TCP), to compare what dns-proxy returns with what the upstream says.
    pub plain: SocketAddr,
    dir: TempDir,
    _child: tokio::process::Child,
    log: Arc<Collector>,
}

impl WorldResolver {
    pub async fn start(world: &World, knot: &Knot, resolution: Resolution) -> WorldResolver {
        let dir = open_temp_dir();
        write_file(&dir.path().join("ca.pem"), ca_pem(), 0o644);
        let dot_port = free_port();
        let doh_port = free_port();
        let plain_port = free_port();
        let validation = match resolution {
            Resolution::Validating => format!(
                "module-config: \"validator iterator\"\n    trust-anchor-file: \"{}\"",
                world.anchor_ds().display()
            ),
            Resolution::IteratorOnly => "module-config: \"iterator\"".to_string(),
        };
        // Forwarding (not iterating from hints) keeps every query on knotd's port: the world's
        // NS records name an address nothing listens on.
        let conf = unbound::write_conf(
            dir.path(),
            &issue_cert(DEFAULT_TLS_NAME, false),
            &format!(
                r#"    interface: 127.0.0.1@{dot_port}
    interface: 127.0.0.1@{plain_port}
    interface: 127.0.0.1@{doh_port}
    tls-port: {dot_port}
    https-port: {doh_port}
    http-endpoint: "{doh_path}"
    log-queries: yes
    val-log-level: 2
    num-threads: 1
    outgoing-range: 64
    so-reuseport: no
    do-not-query-localhost: no
    qname-minimisation: no
    ede: yes
    access-control: 127.0.0.0/8 allow
    local-zone: "test." nodefault
    {validation}
forward-zone:
    name: "."
    forward-addr: {knot_ip}@{knot_port}
remote-control:
    control-enable: yes
    control-interface: "{dir}/control.sock"
    control-use-cert: no
"#,
                dir = dir.path().display(),
                doh_path = unbound::DOH_PATH,
                knot_ip = knot.addr.ip(),
                knot_port = knot.addr.port(),
            ),
        );
        let log = Collector::new();
        let child = unbound::spawn(&conf, None, &log, Duration::from_secs(15)).await;
        WorldResolver {
            dot: SocketAddr::from((Ipv4Addr::LOCALHOST, dot_port)),
            doh: SocketAddr::from((Ipv4Addr::LOCALHOST, doh_port)),
            plain: SocketAddr::from((Ipv4Addr::LOCALHOST, plain_port)),
            dir,
            _child: child,
            log,
        }
    }

    /// This resolver as dns-proxy's `[[upstream]]`.
    pub fn spec(&self) -> UpstreamSpec {
        UpstreamSpec {
            address: self.dot,
            tls_name: Some(DEFAULT_TLS_NAME.to_string()),
            ca_file: Some(self.dir.path().join("ca.pem")),
            pin_sha256: Vec::new(),
        }
    }

    /// This resolver's DNS-over-HTTPS service as dns-proxy's `[[upstream]]` table.
    pub fn doh_upstream_toml(&self) -> String {
        format!(
            "[[upstream]]\nurl = \"https://{DEFAULT_TLS_NAME}:{}{}\"\naddress = \"{}\"\nca_file = {:?}\n",
            self.doh.port(),
            unbound::DOH_PATH,
            self.doh.ip(),
            self.dir.path().join("ca.pem"),
        )
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lines()
    }

    /// Queries it has answered so far, from any client (`unbound-control stats_noreset`:
    /// `total.num.queries`).
    pub async fn queries_answered(&self) -> u64 {
        let control = find_tool("unbound-control").expect("unbound-control");
        let out = within(
            Duration::from_secs(10),
            "unbound-control stats_noreset",
            tokio::process::Command::new(control)
                .arg("-c")
                .arg(self.dir.path().join("unbound.conf"))
                .arg("stats_noreset")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("run unbound-control");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("total.num.queries="))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no total.num.queries in:\n{text}"))
    }
}

/// The world, knotd serving it, and both kinds of unbound upstream in front of it.
pub struct WorldServers {
    pub world: World,
    pub knot: Knot,
    pub validating: WorldResolver,
    pub iterator: WorldResolver,
}

impl WorldServers {
    pub async fn start() -> WorldServers {
        let world = World::build().await;
        let knot = world.serve().await;
        let validating = WorldResolver::start(&world, &knot, Resolution::Validating).await;
        let iterator = WorldResolver::start(&world, &knot, Resolution::IteratorOnly).await;
        WorldServers {
            world,
            knot,
            validating,
            iterator,
        }
    }

    pub fn resolver(&self, resolution: Resolution) -> &WorldResolver {
        match resolution {
            Resolution::Validating => &self.validating,
            Resolution::IteratorOnly => &self.iterator,
        }
    }
}

/// Runs `delv -a ANCHOR @server -p PORT name type` (bounded to 20 s); returns stdout and stderr.
pub async fn delv(anchor: &Path, server: SocketAddr, name: &str, rtype: RecordType) -> String {
    let out = within(
        Duration::from_secs(20),
        "delv",
        tokio::process::Command::new("delv")
            .arg("-a")
            .arg(anchor)
            .arg(format!("@{}", server.ip()))
            .arg("-p")
            .arg(server.port().to_string())
            .arg(name)
            .arg(rtype.to_string())
            .arg("+nomtrace")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run delv");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
