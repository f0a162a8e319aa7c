//! The `dashgate` command: serve | simulate | keys | check. Nothing else lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dashgate::config::{self, Source};
use dashgate::{server, sim};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod alloc;
mod keys;

#[derive(Parser)]
#[command(
    name = "dashgate",
    version,
    about = "An AI gateway for DashScope (Qwen) and OpenAI-compatible upstreams"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file; without it ./dashgate.toml if present, else defaults plus environment.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on, overriding the config (port 0 picks a free one).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Run the built-in simulator in this process as the only upstream (no DashScope
        /// account needed; every response carries `x-dashgate-upstream: simulator`).
        #[arg(long)]
        simulate: bool,
    },
    /// Run a DashScope simulator: a stand-in upstream with deterministic replies.
    Simulate(sim::Options),
    /// Validate the config and exit.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Extract one document's text (stdin) to stdout under limits; run by the gateway.
    #[command(hide = true)]
    ExtractWorker(dashgate::files::worker::WorkerArgs),
    /// Manage client keys in the store.
    Keys {
        /// Config file (its [store] is used); same default as `serve`.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: keys::Action,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::ExtractWorker(args) = cli.command {
        return dashgate::files::worker::main(args);
    }
    if let Command::Serve {
        config,
        listen,
        simulate,
    } = cli.command
    {
        // The gateway's own count only: not its extraction workers', which inherit the variable.
        #[cfg(feature = "alloc-count")]
        alloc::report_from_env();
        return serve(config, listen, simulate);
    }
    init_logging();
    match cli.command {
        Command::Check { config } => match load(config) {
            Ok(config) => {
                println!(
                    "config ok: {} upstream(s), {} static key(s), auth mode {:?}",
                    config.upstreams.len(),
                    config.keys.len(),
                    config.auth.mode
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Serve { .. } | Command::ExtractWorker(_) => ExitCode::FAILURE, // taken above
        Command::Keys { config, action } => {
            let config = match load(config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            match action.check() {
                Ok(()) => run_code(keys::run(config, action)),
                Err(message) => {
                    eprintln!("dashgate: {message}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Simulate(options) => run(async move {
            let listener = TcpListener::bind(options.listen).await?;
            let shutdown = shutdown_on_signal()?;
            announce("dashgate simulator", &listener)?;
            sim::serve(listener, options, shutdown).await
        }),
    }
}

/// The log filter: `DASHGATE_LOG`, `info` when unset.
fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("DASHGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .init();
}

fn serve(config: Option<PathBuf>, listen: Option<SocketAddr>, simulate: bool) -> ExitCode {
    let mut config = match load_with(config, |c| {
        if simulate {
            // The real address is known once the simulator runs; validated as this.
            let placeholder = SocketAddr::from(([127, 0, 0, 1], 0));
            dashgate::console::firstrun::use_simulator(c, placeholder, "sk-sim");
        }
    }) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    let _guard = match dashgate::telemetry::otel::dispatch(&config.telemetry, log_filter()) {
        Ok((dispatch, guard)) => {
            if let Err(e) = tracing::dispatcher::set_global_default(dispatch) {
                eprintln!("dashgate: cannot set up logging: {e}");
            }
            guard
        }
        Err(message) => {
            eprintln!("dashgate: config error: {message}");
            return ExitCode::from(2);
        }
    };
    run(async move {
        let listener = TcpListener::bind(config.server.listen).await?;
        if simulate {
            start_simulator(&mut config).await?;
        }
        let state = server::AppState::new(config)
            .await
            .map_err(std::io::Error::other)?;
        let shutdown = shutdown_on_signal()?;
        announce("dashgate", &listener)?;
        first_run(&state, listener.local_addr()?);
        server::serve(listener, std::sync::Arc::new(state), shutdown).await
    })
}

fn load(path: Option<PathBuf>) -> Result<config::Config, ExitCode> {
    load_with(path, |_| {})
}

fn load_with(
    path: Option<PathBuf>,
    prepare: impl FnOnce(&mut config::Config),
) -> Result<config::Config, ExitCode> {
    let source = match &path {
        Some(path) => Source::File(path),
        None => Source::Default,
    };
    config::load_with(source, &|name| std::env::var(name).ok(), prepare).map_err(|problems| {
        for problem in problems.iter() {
            eprintln!("dashgate: config error: {problem}");
        }
        ExitCode::from(2)
    })
}

/// Prints the bound address on stdout, so scripts using port 0 learn the real one.
fn announce(what: &str, listener: &TcpListener) -> std::io::Result<()> {
    use std::io::Write;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{what} listening on http://{addr}")?;
    out.flush()
}

/// `serve --simulate`: the simulator on a loopback port of its own, in this process.
async fn start_simulator(config: &mut config::Config) -> std::io::Result<()> {
    let key = dashgate::console::random_hex(16)
        .map(|h| format!("sk-sim-{h}"))
        .ok_or_else(|| std::io::Error::other("no randomness for the simulator's key"))?;
    let options = sim::Options {
        // A little pacing, so a stream looks like one in the console's playground.
        chunk_delay_ms: 20,
        api_key: Some(key.clone()),
        ..sim::Options::default()
    };
    let (addr, _) = sim::spawn(options).await?;
    dashgate::console::firstrun::use_simulator(config, addr, &key);
    tracing::warn!(
        "SIMULATED: the only upstream is the built-in DashScope simulator (http://{addr}), not DashScope; \
         answers are canned and every response carries x-dashgate-upstream: simulator"
    );
    Ok(())
}

/// After the address line: what a first run needs to know, and the bootstrap token once.
fn first_run(state: &server::AppState, addr: SocketAddr) {
    use std::io::Write;
    if let Some(hint) = dashgate::console::firstrun::missing_key_hint(&state.config, addr) {
        tracing::warn!("{hint}");
    }
    match state.console.take_bootstrap_token() {
        Some(token) => {
            let mut out = std::io::stdout().lock();
            let printed = dashgate::console::firstrun::bootstrap_lines(addr, &token)
                .iter()
                .try_for_each(|line| writeln!(out, "{line}"))
                .and_then(|()| out.flush());
            // A reader that took the address line and closed stdout must not stop the gateway.
            if let Err(e) = printed {
                tracing::warn!(error = %e, "the bootstrap admin token could not be printed on \
                    stdout; restart with stdout open (and the store still empty) for a new one");
            }
        }
        None if state.console.enabled() => tracing::info!("console: http://{addr}/admin"),
        None => {}
    }
}

/// Runs work that decides its own exit status.
fn run_code(work: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(work),
        Err(e) => {
            eprintln!("dashgate: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(work: impl Future<Output = std::io::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dashgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dashgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Cancelled on SIGTERM or SIGINT. The handlers are registered here, before the address is
/// announced: a signal that comes right after the announcement must not find the default action.
fn shutdown_on_signal() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let trigger = token.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("shutting down");
            trigger.cancel();
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        trigger.cancel();
    });
    Ok(token)
}
