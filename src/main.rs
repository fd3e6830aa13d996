//! `dns-proxy`: parses the command line, loads the configuration, sets up logging and the
//! runtime, runs the daemon and turns the outcome into an exit status. Everything else is in
//! the library.

use std::path::PathBuf;
use std::process::ExitCode;

use dns_proxy::cli::{self, Command};
use dns_proxy::config::{self, Config, Sources, TlsFiles, ZoneUpstream};
use dns_proxy::daemon::{self, DaemonError};
use dns_proxy::upstream::tls::TlsSetupError;
use dns_proxy::{ops::control, ops::logging, ops::sandbox, serve::listeners, upstream::tls};

/// Size-class slabs keep the cache's long-lived entries apart from each query's short-lived
/// buffers; glibc's heap interleaves them and grows well past `cache_size` once the cache is
/// full (docs/design-measurements.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a bad command line (sysexits.h EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit status for a bad configuration (sysexits.h EX_CONFIG).
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("dns-proxy: {error}\n\n{}", cli::USAGE);
            return ExitCode::from(EX_USAGE);
        }
    };
    match args.command {
        Command::Help => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("dns-proxy {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Status | Command::Flush | Command::Reload => {
            let socket = args
                .control
                .unwrap_or_else(|| PathBuf::from(control::DEFAULT_SOCKET));
            let outcome = match args.command {
                Command::Status => control::status_command(&socket, args.json),
                Command::Reload => control::reload_command(&socket, args.pid),
                _ => control::flush_command(&socket, &args.names),
            };
            return match outcome {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("dns-proxy: {error}");
                    ExitCode::from(error.exit_code())
                }
            };
        }
        Command::Run | Command::CheckConfig | Command::ApplyIpAllow => {}
    }
    let mut sources = Sources::from_process(args.config.clone(), args.flags.clone());
    if matches!(args.command, Command::CheckConfig | Command::ApplyIpAllow) {
        // The unit runs these without the service's credentials (ExecReload=, and
        // ExecStartPre= before systemd 254); the daemon checks the TLS pair itself.
        sources.tls_files = TlsFiles::WhenReachable;
    }
    let loaded = config::load(&sources);
    if matches!(args.command, Command::CheckConfig | Command::ApplyIpAllow) {
        // The same TLS setup the daemon does, so a CA file rustls cannot use fails here too.
        let checked = match loaded {
            Ok(loaded) => match check_tls(&loaded.config) {
                Ok(()) => Ok(loaded),
                Err(error) => Err(error.to_string()),
            },
            Err(error) => Err(error.to_string()),
        };
        let loaded = match (checked, &args.unit) {
            (Ok(loaded), _) => loaded,
            (Err(error), None) => {
                eprintln!("dns-proxy: {error}");
                return ExitCode::from(EX_CONFIG);
            }
            // The daemon (at start) or check-config (at reload) reports the problem itself:
            // the journal carries it once.
            (Err(_), Some(unit)) => {
                eprintln!(
                    "dns-proxy: {unit}: IPAddressAllow= left as it was: the configuration is \
                     refused (dns-proxy check-config says why)"
                );
                return ExitCode::from(EX_CONFIG);
            }
        };
        let allow = sandbox::directive_value(&sandbox::ip_allow(&loaded.config));
        let sandboxable = sandbox::needs_addresses(&loaded.config);
        match (args.unit, sandboxable) {
            (Some(unit), Ok(())) => apply_ip_allow(&unit, &loaded.config),
            (Some(unit), Err(reason)) => {
                eprintln!("dns-proxy: {unit}: IPAddressAllow= left as it was: {reason}");
                return ExitCode::from(EX_CONFIG);
            }
            (None, sandboxable) => {
                print!(
                    "{}\n# The IP allow list under the packaged service (set at each start and \
                     reload; nothing else is reachable):\n# IPAddressAllow={allow}\n",
                    loaded.describe()
                );
                if let Err(reason) = sandboxable {
                    println!("# The packaged service refuses this configuration: {reason}");
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    // Before the runtime starts any thread: this edits the environment.
    let inherited = listeners::inherited();
    let (config, identity, problem) = match loaded {
        Ok(loaded) => (loaded.config, loaded.identity, None),
        // Clients already queue on the sockets systemd passed: serve the local zones and say
        // what is wrong, rather than exit and leave them unanswered (dns-proxy(8)).
        Err(error) if inherited.is_some() => (Config::default(), None, Some(error.to_string())),
        Err(error) => {
            eprintln!("dns-proxy: {error}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if let Err(error) = logging::init(args.log_target, args.log_format, &config.log_level) {
        eprintln!("dns-proxy: {error}");
        return ExitCode::from(EX_CONFIG);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.threads > 0 {
        builder.worker_threads(config.threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(sources, config, identity, problem, inherited)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ DaemonError::Tls(_)) => {
            tracing::error!("{error}");
            ExitCode::from(EX_CONFIG)
        }
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// The same TLS setup the daemon does for every upstream, so that a CA file rustls cannot use
/// fails `check-config` and a reload too.
fn check_tls(config: &Config) -> Result<(), TlsSetupError> {
    let zones = config.forward_zones.iter().flat_map(|zone| &zone.upstreams);
    let zone_tls = zones.filter_map(|upstream| match upstream {
        ZoneUpstream::Tls(upstream) => Some(upstream),
        ZoneUpstream::Plain(_) => None,
    });
    for upstream in config.upstreams.iter().chain(zone_tls) {
        tls::client_config(upstream)?;
    }
    Ok(())
}

/// Puts the allow list of a valid configuration in force. When systemd refuses it, the unit's
/// own list stays and the service still starts or reloads: a warning says so.
fn apply_ip_allow(unit: &str, config: &Config) {
    let list = sandbox::ip_allow(config);
    match sandbox::apply(unit, &list) {
        Ok(()) => println!(
            "dns-proxy: {unit}: IPAddressAllow={}",
            sandbox::directive_value(&list)
        ),
        Err(error) => eprintln!(
            "dns-proxy: warning: {error}; the unit's own IPAddressAllow= stays in force \
             (see \"The IP allow list\" in dns-proxy(8))"
        ),
    }
}
