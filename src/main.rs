//! The `keygate` binary: parse the command line, load the config, set up logging, run the server
//! until SIGINT/SIGTERM; SIGHUP reloads the config file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use keygate::config::Config;
use keygate::server::Server;
use keygate::worker::Workers;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Parser)]
#[command(name = "keygate", version = keygate::VERSION_LINE, about = "A Redis-protocol proxy")]
struct Cli {
    /// The configuration file (TOML); see proxy.toml for every key.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Validate the configuration and exit: 0 if it is valid, 2 with the reason if not.
    #[arg(long)]
    check: bool,
    /// Log format, overriding the config's `log.format`.
    #[arg(long, value_name = "text|json", value_parser = ["text", "json"])]
    log_format: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("keygate: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!("keygate: {}: configuration is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    if let Some(format) = &cli.log_format {
        config.log.json = format == "json";
    }
    init_logging(&config);
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // Thread-per-core (see keygate::worker): this thread is worker 0 (it also runs the
    // acceptor and the background tasks); the others start inside the runtime below.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keygate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Signal handlers first: a SIGHUP or SIGTERM that arrives once the port is open (tests
        // and service managers send them as soon as keygate listens) must not find the
        // default action, which ends the process.
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(hup), Ok(term), Ok(int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("keygate: cannot install the signal handlers");
            return ExitCode::FAILURE;
        };
        // Before the backends start: they keep a connection pool per worker.
        let workers = match Workers::start(tokio::runtime::Handle::current(), threads) {
            Ok(workers) => workers,
            Err(e) => {
                eprintln!("keygate: cannot start the worker threads: {e}");
                return ExitCode::FAILURE;
            }
        };
        let server = match Server::bind(config).await {
            Ok(server) => server.on(workers).reload_from(cli.config.clone()),
            Err(e) => {
                error!("{e}");
                eprintln!("keygate: {e}");
                return ExitCode::FAILURE;
            }
        };
        info!(threads, version = keygate::VERSION_LINE, "keygate starting");
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(term, int, shutdown.clone()));
        tokio::spawn(reload_on_hangup(hup, server.proxy()));
        server.run(shutdown).await;
        ExitCode::SUCCESS
    })
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if config.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Reload the config file on every SIGHUP.
async fn reload_on_hangup(
    mut hup: tokio::signal::unix::Signal,
    proxy: std::sync::Arc<keygate::proxy::Proxy>,
) {
    while hup.recv().await.is_some() {
        // The outcome is logged by reload.
        let _ = keygate::reload::reload(&proxy, "SIGHUP").await;
    }
}

/// Cancel `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    shutdown.cancel();
}
