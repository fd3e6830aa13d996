//! Per-link DNS over `org.freedesktop.resolve1`, end to end: the real daemon on a private
//! `dbus-daemon`, driven with `busctl` and `dbus-send` as root and as `nobody`, in a network
//! namespace of the test's own where a veth link carries a plain DNS server that logs every
//! name it is asked. A link's domains go to it and nothing else does (not with `~.`, not with
//! DefaultRoute); callers other than root get AccessDenied and change nothing; bad input is
//! refused; revert takes the zones away; `dns-proxy status`, the link properties and
//! resolv.conf show the state. Without a bus the daemon serves as before.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use tempfile::TempDir;
use tokio::net::UdpSocket;

use crate::support::client::{a_records, udp_query};
use crate::support::proxy::{Proxy, ProxyConfig, run_binary};
use crate::support::system_bus::{PrivateBus, ifindex, in_private_network};
use crate::support::upstream::{FakeUpstream, a_response, open_temp_dir, response_to};
use crate::support::{effective_uid, require_tool};

const NOBODY: u32 = 65534;
/// What the link's server answers for every A query.
const LINK_ANSWER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 99);
/// The link's server, on the veth link `lan0`.
const LINK_SERVER: &str = "10.77.0.53:53";
/// The network namespace's links: `lan0` carries the link server's address.
const NETWORK: &[&str] = &[
    "link add lan0 type veth peer name lan0p",
    "addr add 10.77.0.53/24 dev lan0",
    "link set lan0 up",
    "link set lan0p up",
];
const MANAGER: [&str; 4] = [
    "call",
    "org.freedesktop.resolve1",
    "/org/freedesktop/resolve1",
    "org.freedesktop.resolve1.Manager",
];

/// Root, and the tools: the private network and `setpriv` need root.
fn ready() -> bool {
    if effective_uid() != 0 {
        eprintln!("SKIPPED: a private network namespace needs root");
        return false;
    }
    ["dbus-daemon", "busctl", "dbus-send", "setpriv", "ip"]
        .iter()
        .all(|tool| require_tool(tool))
}

/// A plain DNS server standing in for the one a DHCP lease names: answers every A query with
/// `LINK_ANSWER` and logs the names it was asked.
struct LinkServer {
    names: Arc<Mutex<Vec<String>>>,
}

impl LinkServer {
    async fn start(address: &str) -> LinkServer {
        let socket = UdpSocket::bind(address)
            .await
            .expect("bind the link's server");
        let names = Arc::new(Mutex::new(Vec::new()));
        let log = names.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let Some((_, question)) = response_to(&buf[..len]) else {
                    continue;
                };
                log.lock().unwrap().push(question.name().to_ascii());
                if let Some(bytes) = a_response(&buf[..len], LINK_ANSWER) {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        LinkServer { names }
    }

    fn names(&self) -> Vec<String> {
        self.names.lock().unwrap().clone()
    }
}

fn manager<'a>(method: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = MANAGER.to_vec();
    all.push(method);
    all.extend_from_slice(args);
    all
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A busctl call that must succeed; its output.
async fn ok(bus: &PrivateBus, args: &[&str]) -> String {
    let out = bus.busctl(None, args).await;
    assert!(out.status.success(), "busctl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A busctl call that must fail with `message` in its error.
async fn refused(bus: &PrivateBus, uid: Option<u32>, args: &[&str], message: &str) {
    let out = bus.busctl(uid, args).await;
    assert!(!out.status.success(), "busctl {args:?} succeeded");
    assert!(
        text(&out).contains(message),
        "busctl {args:?}: no {message:?} in {}",
        text(&out)
    );
}

/// A `dbus-send` call of the manager's `method` as `uid` (root when `None`); its reply.
async fn send(bus: &PrivateBus, uid: Option<u32>, method: &str, args: &[&str]) -> String {
    let member = format!("org.freedesktop.resolve1.Manager.{method}");
    let mut all = vec![
        "--dest=org.freedesktop.resolve1",
        "/org/freedesktop/resolve1",
        &member,
    ];
    all.extend_from_slice(args);
    bus.dbus_send(uid, &all).await
}

/// The link object's `properties` at `link_path`, as `busctl get-property` prints them.
async fn link_properties(bus: &PrivateBus, link_path: &str, properties: &[&str]) -> String {
    let mut args = vec![
        "get-property",
        "org.freedesktop.resolve1",
        link_path,
        "org.freedesktop.resolve1.Link",
    ];
    args.extend_from_slice(properties);
    ok(bus, &args).await
}

/// The A records the daemon answers for `name`.
async fn resolve(proxy: &Proxy, name: &str) -> Vec<Ipv4Addr> {
    a_records(&udp_query(proxy.udp4(), name, RecordType::A, None, false).await)
}

/// The daemon's status, as `dns-proxy status` prints it.
async fn status(control: &Path) -> String {
    let control = control.display().to_string();
    run_binary(&["status", "--control", &control], &[])
        .await
        .stdout
}

/// A daemon forwarding to `up` with `extra` keys, on the bus at `address`; its control socket
/// and resolv.conf in `dir`.
async fn start(up: &FakeUpstream, address: &str, dir: &Path, extra: &str) -> Proxy {
    let config = ProxyConfig::new(up.spec()).extra(&format!(
        "resolv_conf = \"{}\"\ncontrol_socket = \"{}\"\n{extra}",
        dir.join("resolv.conf").display(),
        dir.join("control").display()
    ));
    let proxy = Proxy::builder(&config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", address)
        .start()
        .await;
    proxy
        .wait_for_log("owning org.freedesktop.resolve1", Duration::from_secs(10))
        .await;
    proxy
}

/// What a test in the private network drives: the bus, the link's server, the DoT upstream,
/// the daemon (with `extra` keys; its control socket and resolv.conf in `dir`) and the index
/// of `lan0`.
struct Setup {
    bus: PrivateBus,
    link_server: LinkServer,
    up: FakeUpstream,
    dir: TempDir,
    proxy: Proxy,
    lan0: String,
}

impl Setup {
    async fn start(extra: &str) -> Setup {
        let bus = PrivateBus::start().await;
        let link_server = LinkServer::start(LINK_SERVER).await;
        let up = FakeUpstream::start().await;
        let dir = open_temp_dir();
        let proxy = start(&up, &bus.address, dir.path(), extra).await;
        let lan0 = ifindex("lan0").to_string();
        Setup {
            bus,
            link_server,
            up,
            dir,
            proxy,
            lan0,
        }
    }
}

#[test]
fn a_links_domains_go_to_its_server_and_no_other_name_does() {
    if !ready() {
        return;
    }
    in_private_network(NETWORK, || async {
        let Setup {
            bus,
            link_server,
            up,
            dir,
            proxy,
            lan0,
        } = Setup::start("").await;
        let link_path = format!("/org/freedesktop/resolve1/link/_3{}", &lan0[..1]) + &lan0[1..];

        // Another user changes nothing.
        let domains = manager(
            "SetLinkDomains",
            &["ia(sb)", &lan0, "1", "corp.example", "false"],
        );
        refused(&bus, Some(NOBODY), &domains, "Access denied").await;
        let servers = manager(
            "SetLinkDNS",
            &["ia(iay)", &lan0, "1", "2", "4", "10", "77", "0", "53"],
        );
        refused(&bus, Some(NOBODY), &servers, "Access denied").await;
        for method in ["FlushCaches", "ResetServerFeatures"] {
            let reply = send(&bus, Some(NOBODY), method, &[]).await;
            assert!(
                reply.contains("org.freedesktop.DBus.Error.AccessDenied"),
                "{method} as nobody: {reply}"
            );
        }
        let revert = send(
            &bus,
            Some(NOBODY),
            "RevertLink",
            &[&format!("int32:{lan0}")],
        )
        .await;
        assert!(
            revert.contains("org.freedesktop.DBus.Error.AccessDenied"),
            "{revert}"
        );
        assert_eq!(
            resolve(&proxy, "host.corp.example.").await,
            vec![up.answer()]
        );
        assert!(link_server.names().is_empty());

        // Root sets the link as NetworkManager does: domains (with `~.`), default route,
        // servers (with resolved's stub and the unspecified address, which are ignored).
        let domains = manager(
            "SetLinkDomains",
            &[
                "ia(sb)",
                &lan0,
                "3",
                "corp.example",
                "false",
                "vpn.example",
                "true",
                ".",
                "true",
            ],
        );
        ok(&bus, &domains).await;
        ok(
            &bus,
            &manager("SetLinkDefaultRoute", &["ib", &lan0, "true"]),
        )
        .await;
        ok(&bus, &manager("SetLinkMulticastDNS", &["is", &lan0, ""])).await;
        ok(&bus, &manager("SetLinkLLMNR", &["is", &lan0, ""])).await;
        let servers = manager(
            "SetLinkDNS",
            &[
                "ia(iay)", &lan0, "3", "2", "4", "10", "77", "0", "53", "2", "4", "127", "0", "0",
                "53", "2", "4", "0", "0", "0", "0",
            ],
        );
        ok(&bus, &servers).await;
        ok(&bus, &manager("SetLinkDNSOverTLS", &["is", &lan0, ""])).await;

        // In force as soon as the call returns: the link's names go to its server, the rest
        // to the DoT upstream, the cached answer from before is gone.
        assert_eq!(
            resolve(&proxy, "host.corp.example.").await,
            vec![LINK_ANSWER]
        );
        assert_eq!(resolve(&proxy, "a.b.VPN.example.").await, vec![LINK_ANSWER]);
        assert_eq!(resolve(&proxy, "www.example.com.").await, vec![up.answer()]);
        assert_eq!(
            resolve(&proxy, "corp.example.com.").await,
            vec![up.answer()]
        );
        assert_eq!(resolve(&proxy, "xcorp.example.").await, vec![up.answer()]);
        assert_eq!(
            link_server.names(),
            ["host.corp.example.", "a.b.VPN.example."],
            "no other name reaches the link's server"
        );

        // A lookup over D-Bus takes the same way.
        let looked_up = ok(
            &bus,
            &manager(
                "ResolveHostname",
                &["isit", "0", "printer.corp.example", "2", "0"],
            ),
        )
        .await;
        assert!(looked_up.contains("2 4 10 77 0 99"), "{looked_up}");
        let looked_up = ok(
            &bus,
            &manager("ResolveHostname", &["isit", "0", "printer", "2", "0"]),
        )
        .await;
        assert!(
            looked_up.contains("\"printer.corp.example\""),
            "a single label is tried in the search domains: {looked_up}"
        );

        // What the link's object, the manager, status and resolv.conf show.
        let shown =
            link_properties(&bus, &link_path, &["Domains", "DNS", "CurrentDNSServer"]).await;
        assert_eq!(
            shown,
            "a(sb) 3 \"corp.example\" false \"vpn.example\" true \".\" true\n\
             a(iay) 3 2 4 10 77 0 53 2 4 127 0 0 53 2 4 0 0 0 0\n(iay) 2 4 10 77 0 53\n"
        );
        let all = ok(
            &bus,
            &[
                "call",
                "org.freedesktop.resolve1",
                "/org/freedesktop/resolve1",
                "org.freedesktop.DBus.Properties",
                "GetAll",
                "s",
                "",
            ],
        )
        .await;
        assert!(all.contains("\"DNSOverTLS\" s \"yes\""), "{all}");
        let link_path_text = format!("o \"{link_path}\"");
        assert_eq!(
            ok(&bus, &manager("GetLink", &["i", &lan0])).await.trim(),
            link_path_text
        );
        let shown = status(&dir.path().join("control")).await;
        for expected in [
            &format!("Link {lan0} (lan0)"),
            "Servers: 10.77.0.53",
            "127.0.0.53 (ignored: loopback)",
            "0.0.0.0 (ignored: no server)",
            "Domains: corp.example",
            "~vpn.example",
            "Default route: yes, not followed (link_dns = \"domains\")",
            "Link zone corp.example, vpn.example:",
            "10.77.0.53:53 (plain DNS)",
        ] {
            assert!(shown.contains(expected), "no {expected:?} in:\n{shown}");
        }
        let resolv_conf = std::fs::read_to_string(dir.path().join("resolv.conf")).unwrap();
        assert!(
            resolv_conf.contains("\nsearch corp.example\n"),
            "{resolv_conf}"
        );
        assert!(
            resolv_conf.ends_with("options edns0 trust-ad\n"),
            "{resolv_conf}"
        );

        // Bad input changes nothing.
        let before = link_properties(&bus, &link_path, &["Domains", "DNS"]).await;
        let bad: [(&str, &[&str], &str); 7] = [
            (
                "SetLinkDNS",
                &["ia(iay)", &lan0, "1", "7", "4", "10", "0", "0", "1"],
                "Unknown address family 7",
            ),
            (
                "SetLinkDNS",
                &["ia(iay)", &lan0, "1", "2", "3", "10", "0", "0"],
                "Invalid address size",
            ),
            (
                "SetLinkDNS",
                &["ia(iay)", &lan0, "1", "10", "4", "10", "0", "0", "1"],
                "Invalid address size",
            ),
            (
                "SetLinkDomains",
                &["ia(sb)", &lan0, "1", "a..b", "false"],
                "Invalid search domain",
            ),
            (
                "SetLinkDomains",
                &["ia(sb)", &lan0, "1", "has space", "false"],
                "Invalid search domain",
            ),
            (
                "SetLinkDomains",
                &["ia(sb)", "9999", "1", "x.example", "false"],
                "Link 9999 not known",
            ),
            (
                "SetLinkDomains",
                &["ia(sb)", "1", "1", "x.example", "false"],
                "loopback",
            ),
        ];
        for (method, args, message) in bad {
            refused(&bus, None, &manager(method, args), message).await;
        }
        let many: Vec<String> = (0..10_000)
            .flat_map(|i| [format!("d{i}.example"), "false".to_string()])
            .collect();
        let mut args = vec!["ia(sb)", &lan0, "10000"];
        args.extend(many.iter().map(String::as_str));
        refused(
            &bus,
            None,
            &manager("SetLinkDomains", &args),
            "10000 domains on one link",
        )
        .await;
        let reply = send(&bus, None, "RevertLink", &["int32:9999"]).await;
        assert!(
            reply.contains("org.freedesktop.resolve1.NoSuchLink"),
            "{reply}"
        );
        let reply = send(&bus, None, "RegisterService", &[]).await;
        assert!(
            reply.contains("org.freedesktop.DBus.Error.UnknownMethod"),
            "{reply}"
        );
        let after = link_properties(&bus, &link_path, &["Domains", "DNS"]).await;
        assert_eq!(before, after);

        // Root flushes, then reverts: the link's names go back to the DoT upstream.
        let reply = send(&bus, None, "FlushCaches", &[]).await;
        assert!(!reply.contains("Error"), "{reply}");
        ok(&bus, &manager("RevertLink", &["i", &lan0])).await;
        let asked = link_server.names().len();
        assert_eq!(
            resolve(&proxy, "host.corp.example.").await,
            vec![up.answer()]
        );
        assert_eq!(link_server.names().len(), asked);
        let shown = status(&dir.path().join("control")).await;
        assert!(!shown.contains("Link zone"), "{shown}");
        let resolv_conf = std::fs::read_to_string(dir.path().join("resolv.conf")).unwrap();
        assert!(!resolv_conf.contains("\nsearch "), "{resolv_conf}");
        proxy.assert_running();
    });
}

#[test]
fn with_all_a_link_with_the_wildcard_domain_gets_every_other_name() {
    if !ready() {
        return;
    }
    in_private_network(NETWORK, || async {
        let Setup {
            bus,
            link_server,
            up,
            dir: _dir,
            proxy,
            lan0,
        } = Setup::start("link_dns = \"all\"").await;
        ok(
            &bus,
            &manager("SetLinkDomains", &["ia(sb)", &lan0, "1", ".", "true"]),
        )
        .await;
        ok(
            &bus,
            &manager(
                "SetLinkDNS",
                &["ia(iay)", &lan0, "1", "2", "4", "10", "77", "0", "53"],
            ),
        )
        .await;
        assert_eq!(resolve(&proxy, "www.example.com.").await, vec![LINK_ANSWER]);
        assert_eq!(link_server.names(), ["www.example.com."]);
        // The built-in local zones still answer here.
        let localhost = udp_query(proxy.udp4(), "localhost.", RecordType::A, None, false).await;
        assert_eq!(a_records(&localhost), vec![Ipv4Addr::LOCALHOST]);
        ok(&bus, &manager("SetLinkDNS", &["ia(iay)", &lan0, "0"])).await;
        assert_eq!(resolve(&proxy, "www.example.org.").await, vec![up.answer()]);
        assert_eq!(link_server.names().len(), 1);

        // The link object's own methods do the same, without the index.
        let link_path = format!("/org/freedesktop/resolve1/link/_3{}", &lan0[..1]) + &lan0[1..];
        let on_link = |method: &'static str, args: &'static [&'static str]| {
            let mut all = vec![
                "call",
                "org.freedesktop.resolve1",
                &link_path,
                "org.freedesktop.resolve1.Link",
                method,
            ];
            all.extend_from_slice(args);
            all
        };
        ok(
            &bus,
            &on_link("SetDNS", &["a(iay)", "1", "2", "4", "10", "77", "0", "53"]),
        )
        .await;
        refused(
            &bus,
            None,
            &on_link("SetDNS", &["s", "x"]),
            "expecting 'a(iay)'",
        )
        .await;
        assert_eq!(resolve(&proxy, "www.example.net.").await, vec![LINK_ANSWER]);
        ok(&bus, &on_link("Revert", &[])).await;
        assert_eq!(resolve(&proxy, "www.example.edu.").await, vec![up.answer()]);
        assert_eq!(link_server.names().len(), 2);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_bus_the_daemon_says_so_once_and_serves() {
    let up = FakeUpstream::start().await;
    let dir = open_temp_dir();
    let missing = format!("unix:path={}", dir.path().join("no-bus").display());
    let config = ProxyConfig::new(up.spec());
    let proxy = Proxy::builder(&config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &missing)
        .start()
        .await;
    proxy
        .wait_for_log("link DNS: no system bus", Duration::from_secs(10))
        .await;
    let answer = udp_query(proxy.udp4(), "www.example.com.", RecordType::A, None, false).await;
    assert_eq!(a_records(&answer), vec![up.answer()]);
    let said = proxy
        .log_lines()
        .iter()
        .filter(|line| line.contains("link DNS"))
        .count();
    assert_eq!(said, 1, "{:?}", proxy.log_lines());
}
