//! A private system bus for a test: `dbus-daemon` with a configuration of `<type>system</type>`
//! on a socket in a temporary directory (that anyone may use, so that a client running as
//! another uid can call), and `busctl` against it, as root or as another user (`setpriv`).
//! Also a private network namespace for a whole test, so that links and their servers can be
//! made up freely (`in_private_network`).

use std::future::Future;
use std::process::{Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::upstream::{open_temp_dir, write_file};
use super::within;

/// A running `dbus-daemon`; killed when dropped.
pub struct PrivateBus {
    /// `unix:path=…`, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub address: String,
    _dir: TempDir,
    _child: tokio::process::Child,
}

impl PrivateBus {
    /// Starts a bus that lets everyone own names and call everyone (the daemon under test
    /// decides who may change what).
    pub async fn start() -> PrivateBus {
        let dir = open_temp_dir();
        let socket = dir.path().join("system_bus_socket");
        let config = dir.path().join("bus.conf");
        write_file(
            &config,
            &format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
            0o644,
        );
        let mut child = tokio::process::Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start dbus-daemon");
        let stdout = child.stdout.take().expect("dbus-daemon stdout");
        let mut lines = BufReader::new(stdout).lines();
        let printed = within(
            Duration::from_secs(10),
            "dbus-daemon prints its address",
            lines.next_line(),
        )
        .await
        .expect("read dbus-daemon's address");
        assert!(printed.is_some(), "dbus-daemon exited without an address");
        PrivateBus {
            address: format!("unix:path={}", socket.display()),
            _dir: dir,
            _child: child,
        }
    }

    /// `busctl --address=… ARGS`, as root or as `uid` (with no supplementary groups); bounded
    /// to 20 s.
    pub async fn busctl(&self, uid: Option<u32>, args: &[&str]) -> Output {
        let mut command = match uid {
            None => tokio::process::Command::new("busctl"),
            Some(uid) => {
                let mut command = tokio::process::Command::new("setpriv");
                command.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "busctl",
                ]);
                command
            }
        };
        command
            .arg(format!("--address={}", self.address))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        within(Duration::from_secs(20), "busctl", command.output())
            .await
            .expect("run busctl")
    }
}

impl PrivateBus {
    /// `dbus-send --print-reply ARGS` on this bus (it prints D-Bus error names, which busctl
    /// does not), as root or as `uid`; stdout and stderr together.
    pub async fn dbus_send(&self, uid: Option<u32>, args: &[&str]) -> String {
        let mut command = tokio::process::Command::new("setpriv");
        let uid = uid.unwrap_or(0);
        command
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "dbus-send",
            ])
            .arg(format!("--bus={}", self.address))
            .arg("--print-reply")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = within(Duration::from_secs(20), "dbus-send", command.output())
            .await
            .expect("run dbus-send");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// Runs `test` on a thread of its own in a new network namespace (only loopback, up, and
/// what `setup` adds with `ip` commands), on a runtime whose threads and child processes all
/// live in it. The namespace goes away with the thread and its processes. Needs root.
pub fn in_private_network<F, Fut>(setup: &[&str], test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let setup: Vec<String> = setup.iter().map(|s| s.to_string()).collect();
    let outcome = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a network namespace");
        for command in std::iter::once("link set lo up".to_string()).chain(setup) {
            let status = std::process::Command::new("ip")
                .args(command.split_whitespace())
                .status()
                .expect("run ip");
            assert!(status.success(), "ip {command} failed");
        }
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(test());
    })
    .join();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The interface index of `name` in the current thread's network namespace, from
/// `ip -o link show NAME` (`5: NAME: …`; /sys shows the namespace it was mounted in).
pub fn ifindex(name: &str) -> u32 {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show", name])
        .output()
        .expect("run ip");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':')
        .next()
        .and_then(|index| index.trim().parse().ok())
        .unwrap_or_else(|| panic!("no interface {name}: {text}"))
}
