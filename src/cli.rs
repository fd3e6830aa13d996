//! The command line: what to do (run, check-config, apply-ip-allow, or ask the running daemon
//! with status, flush and reload) and the few settings that must be known before the configuration is
//! read (where it is, where logs go).

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;

use crate::config::Flags;
use crate::ops::logging::{LogFormat, LogTarget};

pub const USAGE: &str = "\
Usage: dns-proxy [check-config | apply-ip-allow UNIT] [OPTIONS]
       dns-proxy status [--json] [--control PATH]
       dns-proxy flush [NAME...] [--control PATH]
       dns-proxy reload [--pid PID] [--control PATH]

Forwards the DNS queries of this host to upstream resolvers over DNS-over-TLS.

Commands:
  (none)          run the daemon
  check-config    validate the configuration and print it, with where each value came from,
                  and the IP allow list it needs under systemd
  apply-ip-allow UNIT
                  validate the configuration, then set UNIT's IPAddressAllow= to that list
                  (the packaged unit runs it as root at each start and reload)
  status          show the running daemon's listeners, upstreams (up or down, since when,
                  last error, latency), cache and counters
  flush           empty the running daemon's cache, or with NAMEs remove each NAME and
                  every name below it (root and the daemon's user only)
  reload          have the running daemon load its configuration again, and wait until it
                  is in force or refused (root and the daemon's user only); with --pid, a
                  daemon without a control socket is sent SIGHUP instead

Options:
  -c, --config FILE        configuration file (default: /etc/dns-proxy/dns-proxy.toml);
                           drop-ins are read from FILE's stem + .d/ (dns-proxy.d/*.toml)
  -l, --listen ADDR        address to bind for UDP and TCP, e.g. 127.0.0.1:5300 (repeatable;
                           replaces `listen`; ignored under socket activation)
      --log TARGET         auto (journal under systemd, else stderr), journal or stderr
      --log-format FORMAT  text or json (for stderr)
      --log-level LEVEL    error, warn, info, debug or trace (replaces `log_level`)
      --json               status: print JSON for scripts (its shape: dns-proxy(8))
      --control PATH       status, flush, reload: the daemon's control socket
                           (default: /run/dns-proxy/control)
      --pid PID            reload: the daemon's process, signalled when it has no
                           control socket (the packaged unit passes $MAINPID)
  -h, --help               print this help
  -V, --version            print the version

Every configuration key can also be set as DNS_PROXY_<KEY> in the environment.
See dns-proxy(8) and dns-proxy.toml(5).
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Run,
    CheckConfig,
    ApplyIpAllow,
    /// Ask the running daemon for its status.
    Status,
    /// Flush the running daemon's cache.
    Flush,
    /// Have the running daemon reload its configuration, and wait for the outcome.
    Reload,
    Help,
    Version,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub command: Command,
    /// `--config`: replaces the default file, which then must exist.
    pub config: Option<PathBuf>,
    /// The systemd unit whose allow list `apply-ip-allow` sets.
    pub unit: Option<String>,
    /// `flush`: the names to remove, with those below them; none for the whole cache.
    pub names: Vec<String>,
    /// `status --json`.
    pub json: bool,
    /// `--control`: the daemon's control socket, for `status`, `flush` and `reload`.
    pub control: Option<PathBuf>,
    /// `reload --pid`: the daemon to send SIGHUP when it has no control socket.
    pub pid: Option<i32>,
    pub flags: Flags,
    pub log_target: LogTarget,
    pub log_format: LogFormat,
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, lexopt::Error> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut parsed = Args {
        command: Command::Run,
        config: None,
        unit: None,
        names: Vec::new(),
        json: false,
        control: None,
        pid: None,
        flags: Flags::default(),
        log_target: LogTarget::Auto,
        log_format: LogFormat::Text,
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Short('c') | Long("config") => parsed.config = Some(parser.value()?.into()),
            Short('l') | Long("listen") => parsed.flags.listen.push(parser.value()?.string()?),
            Long("log") => {
                parsed.log_target = match parser.value()?.string()?.as_str() {
                    "auto" => LogTarget::Auto,
                    "journal" => LogTarget::Journal,
                    "stderr" => LogTarget::Stderr,
                    other => return Err(invalid("--log", other, "auto, journal or stderr")),
                }
            }
            Long("log-format") => {
                parsed.log_format = match parser.value()?.string()?.as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => return Err(invalid("--log-format", other, "text or json")),
                }
            }
            Long("log-level") => parsed.flags.log_level = Some(parser.value()?.string()?),
            Long("json") => parsed.json = true,
            Long("control") => parsed.control = Some(parser.value()?.into()),
            Long("pid") => {
                let value = parser.value()?.string()?;
                match value.parse::<i32>() {
                    Ok(pid) if pid > 0 => parsed.pid = Some(pid),
                    _ => return Err(invalid("--pid", &value, "a process id")),
                }
            }
            Short('h') | Long("help") => parsed.command = Command::Help,
            Short('V') | Long("version") => parsed.command = Command::Version,
            Value(value) if value == "check-config" && parsed.command == Command::Run => {
                parsed.command = Command::CheckConfig;
            }
            Value(value) if value == "apply-ip-allow" && parsed.command == Command::Run => {
                parsed.command = Command::ApplyIpAllow;
            }
            Value(value) if parsed.command == Command::ApplyIpAllow && parsed.unit.is_none() => {
                parsed.unit = Some(value.string()?);
            }
            Value(value) if value == "status" && parsed.command == Command::Run => {
                parsed.command = Command::Status;
            }
            Value(value) if value == "flush" && parsed.command == Command::Run => {
                parsed.command = Command::Flush;
            }
            Value(value) if value == "reload" && parsed.command == Command::Run => {
                parsed.command = Command::Reload;
            }
            Value(value) if parsed.command == Command::Flush => {
                parsed.names.push(value.string()?);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    if parsed.command == Command::ApplyIpAllow && parsed.unit.is_none() {
        return Err("apply-ip-allow needs the name of the unit, e.g. dns-proxy.service".into());
    }
    if parsed.json && !matches!(parsed.command, Command::Status | Command::Help) {
        return Err("--json is an option of status".into());
    }
    let asks_daemon = matches!(
        parsed.command,
        Command::Status | Command::Flush | Command::Reload
    );
    if parsed.control.is_some() && !asks_daemon && parsed.command != Command::Help {
        return Err("--control is an option of status, flush and reload".into());
    }
    if parsed.pid.is_some() && !matches!(parsed.command, Command::Reload | Command::Help) {
        return Err("--pid is an option of reload".into());
    }
    Ok(parsed)
}

fn invalid(option: &str, value: &str, expected: &str) -> lexopt::Error {
    format!("invalid value {value:?} for {option}: expected {expected}").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Args, lexopt::Error> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn no_arguments_runs_with_defaults() {
        let args = parse_str(&[]).unwrap();
        assert_eq!(args.command, Command::Run);
        assert_eq!(args.config, None);
        assert_eq!(args.log_target, LogTarget::Auto);
        assert_eq!(args.log_format, LogFormat::Text);
    }

    #[test]
    fn options_are_parsed() {
        let args = parse_str(&[
            "check-config",
            "--config=/tmp/x.toml",
            "-l",
            "127.0.0.1:53",
            "--listen",
            "[::1]:53",
            "--log",
            "journal",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ])
        .unwrap();
        assert_eq!(args.command, Command::CheckConfig);
        assert_eq!(args.config, Some(PathBuf::from("/tmp/x.toml")));
        assert_eq!(args.flags.listen, vec!["127.0.0.1:53", "[::1]:53"]);
        assert_eq!(args.flags.log_level.as_deref(), Some("debug"));
        assert_eq!(args.log_target, LogTarget::Journal);
        assert_eq!(args.log_format, LogFormat::Json);
    }

    #[test]
    fn apply_ip_allow_takes_a_unit() {
        let args = parse_str(&["apply-ip-allow", "dns-proxy.service", "-c", "/x.toml"]).unwrap();
        assert_eq!(args.command, Command::ApplyIpAllow);
        assert_eq!(args.unit.as_deref(), Some("dns-proxy.service"));
        assert_eq!(args.config, Some(PathBuf::from("/x.toml")));
        assert!(parse_str(&["apply-ip-allow"]).is_err());
        assert!(parse_str(&["apply-ip-allow", "a.service", "b.service"]).is_err());
        assert!(parse_str(&["check-config", "dns-proxy.service"]).is_err());
    }

    #[test]
    fn status_and_flush_ask_the_daemon() {
        let args = parse_str(&["status", "--json", "--control", "/tmp/c"]).unwrap();
        assert_eq!(args.command, Command::Status);
        assert!(args.json);
        assert_eq!(args.control, Some(PathBuf::from("/tmp/c")));
        let args = parse_str(&["status"]).unwrap();
        assert!(!args.json);
        assert_eq!(args.control, None);

        let args = parse_str(&["flush", "example.com", "--control=/c", "b.test"]).unwrap();
        assert_eq!(args.command, Command::Flush);
        assert_eq!(args.names, vec!["example.com", "b.test"]);
        assert_eq!(args.control, Some(PathBuf::from("/c")));
        assert!(parse_str(&["flush"]).unwrap().names.is_empty());

        assert!(parse_str(&["status", "example.com"]).is_err());
        assert!(parse_str(&["flush", "--json"]).is_err());
        assert!(parse_str(&["--json"]).is_err());
        assert!(parse_str(&["check-config", "--control", "/c"]).is_err());
        assert!(parse_str(&["status", "flush"]).is_err());

        let args = parse_str(&["reload", "--pid", "812"]).unwrap();
        assert_eq!(args.command, Command::Reload);
        assert_eq!(args.pid, Some(812));
        assert_eq!(parse_str(&["reload"]).unwrap().pid, None);
        assert!(parse_str(&["reload", "--pid", "0"]).is_err());
        assert!(parse_str(&["reload", "--pid", "x"]).is_err());
        assert!(parse_str(&["reload", "example.com"]).is_err());
        assert!(parse_str(&["status", "--pid", "812"]).is_err());
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(parse_str(&["--bogus"]).is_err());
        assert!(parse_str(&["run-fast"]).is_err());
        assert!(parse_str(&["--log", "syslog"]).is_err());
        assert!(parse_str(&["--config"]).is_err());
    }
}
