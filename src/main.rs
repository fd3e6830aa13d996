//! `dns-proxy`: parses the command line, loads the configuration, sets up logging and the
//! runtime, runs the daemon and turns the outcome into an exit status. Everything else is in
//! the library.

use std::process::ExitCode;

use dns_proxy::cli::{self, Command};
use dns_proxy::config::{self, Sources};
use dns_proxy::daemon::{self, DaemonError};
use dns_proxy::{listeners, logging, tls};

/// Size-class slabs keep the cache's long-lived entries apart from each query's short-lived
/// buffers; glibc's heap interleaved them and held about three times `cache_size` once full.
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
        Command::Run | Command::CheckConfig => {}
    }
    let sources = Sources::from_process(args.config.clone(), args.flags.clone());
    let loaded = match config::load(&sources) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("dns-proxy: {error}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if args.command == Command::CheckConfig {
        // The same TLS setup the daemon does, so a CA file rustls cannot use fails here too.
        for upstream in &loaded.config.upstreams {
            if let Err(error) = tls::client_config(upstream) {
                eprintln!("dns-proxy: {error}");
                return ExitCode::from(EX_CONFIG);
            }
        }
        print!("{}", loaded.describe());
        return ExitCode::SUCCESS;
    }
    if let Err(error) = logging::init(args.log_target, args.log_format, &loaded.config.log_level) {
        eprintln!("dns-proxy: {error}");
        return ExitCode::from(EX_CONFIG);
    }
    // Before the runtime starts any thread: this edits the environment.
    let inherited = listeners::inherited();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if loaded.config.threads > 0 {
        builder.worker_threads(loaded.config.threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(sources, loaded.config, inherited)) {
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
