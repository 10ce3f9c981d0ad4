//! The `tickwire` binary: parses flags and config, starts the engine, prints
//! one ready line, and shuts down gracefully on SIGINT/SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tickwire::config::{Cli, Config};
use tickwire::{Engine, StartError};

/// Workers get 4 s to send close 1001 and flush; exit must come within 5 s.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(4500);

/// SIGTERM: readiness drops at once and clients get 1012 spread over
/// `window`; ends when they are gone, at the window's end, or at a second
/// SIGTERM or SIGINT (then the caller's 1001 flush closes whoever is left).
/// SIGHUP meanwhile reloads the certificate, as at any other time.
fn drain(
    engine: &Engine,
    signals: &mut signal_hook::iterator::Signals,
    window: Duration,
    tls: Option<&(tickwire::tls::SharedConfig, tickwire::tls::TlsFiles)>,
) {
    eprintln!(
        "tickwire: draining over {} ms (send SIGTERM or SIGINT again to stop at once)",
        window.as_millis()
    );
    engine.begin_drain(window);
    let deadline = std::time::Instant::now() + window;
    // Let the workers plan their closes before judging "no clients left".
    std::thread::sleep(Duration::from_millis(200));
    while std::time::Instant::now() < deadline && engine.open_connections() > 0 {
        for sig in signals.pending() {
            if sig != SIGHUP {
                return;
            }
            reload_tls(tls);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGHUP: new handshakes use the re-read certificate and key; open
/// connections keep theirs. A bad file leaves the old ones in use.
fn reload_tls(tls: Option<&(tickwire::tls::SharedConfig, tickwire::tls::TlsFiles)>) {
    let Some((shared, files)) = tls else {
        eprintln!("tickwire: SIGHUP: no TLS certificate configured, nothing to reload");
        return;
    };
    match tickwire::tls::reload(files, shared) {
        Ok(()) => eprintln!(
            "tickwire: TLS certificate reloaded from {}",
            files.cert.display()
        ),
        Err(e) => eprintln!(
            "tickwire: TLS reload failed ({}): keeping the old certificate",
            e.0
        ),
    }
}

fn main() -> ExitCode {
    let config = match Config::load(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tickwire: {e}");
            return ExitCode::from(2);
        }
    };
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tickwire: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let demo = config.demo;
    let drain_timeout = config.drain_timeout;
    let tls = config.tls.clone().zip(config.tls_files.clone());
    let engine = match Engine::start(config) {
        Ok(e) => e,
        Err(e @ StartError::Bind { .. }) => {
            eprintln!(
                "tickwire: {e} (is another instance running? pick another port with --listen/--ingest)"
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("tickwire: {e}");
            return ExitCode::from(1);
        }
    };
    // Tests and scripts read this line to learn the ports (which may be 0 = ephemeral).
    let admin = engine
        .admin_addr()
        .map(|a| format!(" admin={a}"))
        .unwrap_or_default();
    println!(
        "tickwire ready listen={} ingest={} workers={}{admin}",
        engine.listen_addr(),
        engine.ingest_addr(),
        engine.workers()
    );
    if demo {
        println!(
            "demo feed running: open http://{}/ in a browser, or connect to ws://{}/ws",
            engine.listen_addr(),
            engine.listen_addr()
        );
    }
    // drain_timeout = 0: SIGTERM stops at once like SIGINT.
    let mut signal = None;
    for sig in signals.forever() {
        if sig != SIGHUP {
            signal = Some(sig);
            break;
        }
        reload_tls(tls.as_ref());
    }
    if signal == Some(SIGTERM) && !drain_timeout.is_zero() {
        drain(&engine, &mut signals, drain_timeout, tls.as_ref());
    }
    eprintln!("tickwire: shutting down");
    if engine.shutdown(SHUTDOWN_TIMEOUT) {
        ExitCode::SUCCESS
    } else {
        eprintln!("tickwire: some connections did not drain in time");
        ExitCode::SUCCESS
    }
}
