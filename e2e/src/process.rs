//! One component process: started in its own process group with its output in a log
//! file, stopped with SIGTERM, a grace period, then SIGKILL.
//!
//! Own process group: a Ctrl-C in the terminal reaches only the harness, which then stops
//! the components in order (the API server before etcd). Were they in the terminal's
//! group, etcd would die together with the API server, and kube-apiserver has been seen
//! still running 15 s after SIGTERM once etcd had gone first.

use std::{
    collections::BTreeSet,
    fmt,
    fs::File,
    io::{Read, Seek, SeekFrom},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};

use crate::procfs;

/// How long a component gets to exit after SIGTERM before it is killed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// A running component.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    started: Instant,
}

/// How a component ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It had exited on its own before it was asked to stop (a crash, usually).
    ExitedEarly(String),
    /// It exited after SIGTERM, within the grace period.
    Terminated(String),
    /// It was still running after the grace period and got SIGKILL.
    Killed,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::ExitedEarly(s) => write!(f, "had already exited ({s})"),
            Ending::Terminated(s) => write!(f, "stopped on SIGTERM ({s})"),
            Ending::Killed => write!(f, "killed after the grace period"),
        }
    }
}

/// What is known about a component once it is stopped.
#[derive(Clone, Debug)]
pub struct Stopped {
    /// Component name.
    pub name: String,
    /// Its process id (gone now).
    pub pid: u32,
    /// Peak RSS in KiB, read just before the stop (`None` if it had already exited).
    pub peak_rss_kib: Option<u64>,
    /// TCP ports it listened on just before the stop.
    pub listened_on: BTreeSet<u16>,
    /// How long it ran.
    pub ran_for: Duration,
    /// How long stopping it took.
    pub stop_took: Duration,
    /// How it ended.
    pub ending: Ending,
    /// Its log file.
    pub log: PathBuf,
}

impl Process {
    /// Starts `cmd` as component `name`, with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("creating log file {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            started: Instant::now(),
        })
    }

    /// Component name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// An error naming the component, its exit status and the end of its log if it has
    /// exited: components are long-running, so any exit during a run is a failure.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({}); log {}:\n{}",
                self.name,
                describe(status),
                self.log.display(),
                log_tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// Waits until `ready_url` (the component's `/readyz`) answers 2xx, checking all along
    /// that the process still runs, so that a crash at start shows with its log rather
    /// than as a timeout.
    pub async fn wait_ready(&mut self, ready_url: &str, timeout: Duration) -> Result<()> {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.check_running()?;
            if let Ok(r) = http.get(ready_url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} was not ready within {timeout:?}; log: {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the component: SIGTERM to its process group, up to `grace` to exit, then
    /// SIGKILL. Peak memory and listening ports are read first, while /proc still has them.
    pub fn stop(&mut self, grace: Duration) -> Stopped {
        let pid = self.pid();
        let began = Instant::now();
        let ran_for = self.started.elapsed();
        let stopped = |peak_rss_kib, listened_on, ending| Stopped {
            name: self.name.clone(),
            pid,
            peak_rss_kib,
            listened_on,
            ran_for,
            stop_took: began.elapsed(),
            ending,
            log: self.log.clone(),
        };
        if let Ok(Some(status)) = self.child.try_wait() {
            return stopped(None, BTreeSet::new(), Ending::ExitedEarly(describe(status)));
        }
        let peak = procfs::peak_rss_kib(pid);
        let ports = procfs::listening_ports(pid);
        let group = Pid::from_raw(pid as i32);
        // The group may be gone already (the process exited a moment ago): nothing to do then.
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return stopped(peak, ports, Ending::Terminated(describe(status)));
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
        stopped(peak, ports, Ending::Killed)
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => Signal::try_from(sig)
            .map(|s| format!("signal {}", s.as_str()))
            .unwrap_or_else(|_| format!("signal {sig}")),
        _ => status.to_string(),
    }
}

/// The last `lines` lines of a log file (reading at most its last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn stops_a_process_on_sigterm_and_reads_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let mut p = Process::spawn("x", sh("echo hello; exec sleep 30"), &log).unwrap();
        thread::sleep(Duration::from_millis(200));
        p.check_running().unwrap();
        let s = p.stop(Duration::from_secs(5));
        assert!(matches!(s.ending, Ending::Terminated(_)), "{:?}", s.ending);
        assert!(s.peak_rss_kib.is_some());
        assert_eq!(log_tail(&log, 5), "hello");
        assert!(!Path::new(&format!("/proc/{}", s.pid)).exists());
    }

    #[test]
    fn kills_a_process_that_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let mut p = Process::spawn(
            "stubborn",
            sh("trap '' TERM; while :; do sleep 0.05; done"),
            &log,
        )
        .unwrap();
        thread::sleep(Duration::from_millis(200));
        let s = p.stop(Duration::from_millis(300));
        assert_eq!(s.ending, Ending::Killed);
    }

    #[test]
    fn reports_an_early_exit_with_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let mut p = Process::spawn("crashy", sh("echo boom >&2; exit 3"), &log).unwrap();
        thread::sleep(Duration::from_millis(300));
        let err = p.check_running().unwrap_err().to_string();
        assert!(err.contains("crashy exited (exit code 3)"), "{err}");
        assert!(err.contains("boom"), "{err}");
        assert!(matches!(
            p.stop(DEFAULT_GRACE).ending,
            Ending::ExitedEarly(_)
        ));
    }
}
