//! The set of processes one environment started, stopped newest first: kwok, the
//! scheduler and the controller-manager go before the API server, and the API server
//! before etcd. Later components (operator, webhook, stores) are started last and so
//! stopped first.
//!
//! Every live supervisor is also listed in a process-wide registry, which the Ctrl-C
//! handler (`signals`) uses to stop everything before the process exits.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Result;

use crate::{
    process::{Process, Stopped},
    reaper::Reaper,
};

/// Processes of one environment, in start order.
#[derive(Debug)]
pub struct Supervisor {
    procs: Vec<Process>,
    stopped: Vec<Stopped>,
    reaper: Option<Reaper>,
    grace: Duration,
    run_dir: PathBuf,
    keep_run_dir: Arc<AtomicBool>,
}

/// A supervisor shared between its environment and the signal handler.
pub type Shared = Arc<Mutex<Supervisor>>;

static REGISTRY: Mutex<Vec<Weak<Mutex<Supervisor>>>> = Mutex::new(Vec::new());

impl Supervisor {
    /// A supervisor with its reaper running, listed in the registry. After the last
    /// process has stopped it removes `run_dir`, unless `keep_run_dir` is set by then.
    pub fn start(
        grace: Duration,
        run_dir: PathBuf,
        keep_run_dir: Arc<AtomicBool>,
    ) -> Result<Shared> {
        let sup = Arc::new(Mutex::new(Self {
            procs: Vec::new(),
            stopped: Vec::new(),
            reaper: Some(Reaper::start(grace)?),
            grace,
            run_dir,
            keep_run_dir,
        }));
        let mut reg = lock(&REGISTRY);
        reg.retain(|w| w.strong_count() > 0);
        reg.push(Arc::downgrade(&sup));
        Ok(sup)
    }

    /// Takes over a started process.
    pub fn adopt(&mut self, p: Process) {
        if let Some(r) = &mut self.reaper {
            r.watch(p.pid());
        }
        self.procs.push(p);
    }

    /// The running processes, in start order.
    pub fn processes(&mut self) -> &mut [Process] {
        &mut self.procs
    }

    /// Fails if any process has exited (with its name and log tail).
    pub fn check_running(&mut self) -> Result<()> {
        self.procs.iter_mut().try_for_each(Process::check_running)
    }

    /// Stops every running process, newest first, calling `on_stop` after each; then
    /// ends the reaper and removes the run directory unless it is to be kept. Returns
    /// everything stopped so far (also by earlier calls), in stop order. Idempotent.
    pub fn stop_all(&mut self, mut on_stop: impl FnMut(&Stopped)) -> Vec<Stopped> {
        while let Some(mut p) = self.procs.pop() {
            let s = p.stop(self.grace);
            if let Some(r) = &mut self.reaper {
                r.unwatch(s.pid);
            }
            on_stop(&s);
            self.stopped.push(s);
        }
        if let Some(mut r) = self.reaper.take() {
            r.finish();
            if !self.keep_run_dir.load(Ordering::SeqCst) {
                let _ = std::fs::remove_dir_all(&self.run_dir);
            }
        }
        self.stopped.clone()
    }

    /// Pid of the reaper while it runs.
    pub fn reaper_pid(&self) -> Option<u32> {
        self.reaper.as_ref().map(Reaper::pid)
    }
}

impl Drop for Supervisor {
    /// The last line of defence on the normal path: an environment that was never shut
    /// down explicitly (a panic while starting, say) is stopped here.
    fn drop(&mut self) {
        self.stop_all(|_| {});
    }
}

/// Stops every process of every live supervisor (the Ctrl-C path), printing each stop,
/// then checks that nothing is left; false if something was.
pub fn stop_everything() -> bool {
    let live: Vec<Shared> = lock(&REGISTRY).iter().filter_map(Weak::upgrade).collect();
    let mut clean = true;
    for sup in live {
        let mut sup = lock(&sup);
        let reaper = sup.reaper_pid();
        let stopped = sup.stop_all(|s| eprintln!("  {}", crate::hygiene::describe_stop(s)));
        let kept = sup.keep_run_dir.load(Ordering::SeqCst);
        let report = crate::hygiene::check(stopped, reaper, sup.run_dir.clone(), kept);
        for l in &report.leftovers {
            eprintln!("  LEFTOVER: {l}");
        }
        if report.is_clean() {
            eprintln!("  hygiene: no process left, every port closed");
        }
        if kept {
            eprintln!("  logs kept in {}", report.run_dir.join("logs").display());
        }
        clean &= report.is_clean();
    }
    clean
}

/// Locks a mutex even if a panicking test poisoned it: teardown must still run.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
