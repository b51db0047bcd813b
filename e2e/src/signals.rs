//! Ctrl-C (SIGINT), SIGTERM and SIGHUP: stop every component in order, then exit. A
//! second signal during that teardown exits at once (status 130); the reaper then stops
//! what is left.

use std::sync::Once;

use tokio::signal::unix::{SignalKind, signal};

use crate::supervisor;

/// Exit status after an interrupt (128 + SIGINT), as shells report it.
pub const INTERRUPTED: i32 = 130;

/// Installs the handler once per process (later calls do nothing); after the teardown
/// the process exits with `exit_code` (`up`, for which Ctrl-C is the normal way to stop,
/// uses 0; test binaries use [`INTERRUPTED`]), or 1 when the teardown left a process or
/// port behind. From then on these signals no longer end
/// the process by themselves.
pub fn install(exit_code: i32) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::thread::Builder::new()
            .name("lotabots-e2e-signals".into())
            .spawn(move || wait_and_tear_down(exit_code))
            .expect("spawning the signal thread");
    });
}

fn wait_and_tear_down(exit_code: i32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the signal thread");
    rt.block_on(async {
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            eprintln!(
                "lotabots-e2e: cannot install signal handlers; Ctrl-C leaves cleanup to the reaper"
            );
            return;
        };
        let mut first = true;
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            if !first {
                eprintln!("lotabots-e2e: interrupted again, exiting now");
                std::process::exit(INTERRUPTED);
            }
            first = false;
            eprintln!(
                "lotabots-e2e: interrupted, stopping the environment (again to exit at once)"
            );
            // Teardown blocks; run it off this thread so a second signal is still seen.
            std::thread::spawn(move || {
                let clean = supervisor::stop_everything();
                std::process::exit(if clean { exit_code } else { 1 });
            });
        }
    });
}
