//! What a teardown leaves behind, checked rather than assumed: every process the harness
//! started is gone from /proc, and every port one of them listened on refuses
//! connections. The report also carries each component's peak memory.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use crate::{ports, process::Stopped};

/// The result of a teardown.
#[derive(Clone, Debug)]
pub struct Teardown {
    /// Every component, in stop order.
    pub stopped: Vec<Stopped>,
    /// The reaper's pid, which must be gone too.
    pub reaper: Option<u32>,
    /// What is still there (processes, ports); empty when clean.
    pub leftovers: Vec<String>,
    /// The run directory, and whether it was kept.
    pub run_dir: PathBuf,
    /// Whether the run directory was kept (logs to read).
    pub kept: bool,
}

impl Teardown {
    /// Whether nothing was left behind.
    pub fn is_clean(&self) -> bool {
        self.leftovers.is_empty()
    }
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Live processes (not this one, not zombies) whose command line mentions `dir`.
fn processes_mentioning(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            // A zombie has an empty command line.
            (!cmd.trim().is_empty() && cmd.contains(&needle)).then(|| (pid, cmd.trim().to_string()))
        })
        .collect()
}

/// Checks stopped components (and the reaper) for leftovers.
pub fn check(stopped: Vec<Stopped>, reaper: Option<u32>, run_dir: PathBuf, kept: bool) -> Teardown {
    let mut leftovers = Vec::new();
    for s in &stopped {
        if process_exists(s.pid) {
            leftovers.push(format!("{} (pid {}) is still running", s.name, s.pid));
        }
        for port in &s.listened_on {
            if ports::is_listening(*port) {
                leftovers.push(format!(
                    "127.0.0.1:{port} (opened by {}) still accepts connections",
                    s.name
                ));
            }
        }
    }
    if let Some(pid) = reaper.filter(|p| process_exists(*p)) {
        leftovers.push(format!("the reaper (pid {pid}) is still running"));
    }
    // Anything else still pointing into the run directory (a kubectl a test started, a
    // process a component forked into another group).
    for (pid, cmd) in processes_mentioning(&run_dir) {
        leftovers.push(format!(
            "pid {pid} still runs with the run directory: {cmd}"
        ));
    }
    Teardown {
        stopped,
        reaper,
        leftovers,
        run_dir,
        kept,
    }
}

/// One line about one stopped component.
pub fn describe_stop(s: &Stopped) -> String {
    let rss = s
        .peak_rss_kib
        .map_or("-".into(), |k| format!("{} MiB", k / 1024));
    format!(
        "{} (pid {}): {} in {:.2} s, peak RSS {rss}",
        s.name,
        s.pid,
        s.ending,
        s.stop_took.as_secs_f64()
    )
}

impl fmt::Display for Teardown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<Vec<String>> = self
            .stopped
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.peak_rss_kib
                        .map_or("-".into(), |k| format!("{}", k / 1024)),
                    format!("{:.1}", s.ran_for.as_secs_f64()),
                    format!("{:.2}", s.stop_took.as_secs_f64()),
                    s.listened_on
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    s.ending.to_string(),
                ]
            })
            .collect();
        f.write_str(&crate::table::render(
            &[
                "COMPONENT",
                "PEAK RSS MiB",
                "RAN s",
                "STOP s",
                "PORTS",
                "ENDING",
            ],
            &rows,
        ))?;
        if self.is_clean() {
            writeln!(f, "hygiene: no process left, every port closed")?;
        } else {
            for l in &self.leftovers {
                writeln!(f, "LEFTOVER: {l}")?;
            }
        }
        if self.kept {
            writeln!(f, "logs kept in {}", self.run_dir.join("logs").display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{os::unix::process::CommandExt, process::Command};

    #[test]
    fn finds_a_process_that_mentions_the_run_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("sh")
            // `; :` keeps the shell (and its command line, naming the directory as $0)
            // from being replaced by `sleep`.
            .args(["-c", "sleep 30; :"])
            .arg(dir.path())
            .process_group(0)
            .spawn()
            .unwrap();
        // Until it has exec'd, the child still shows this process's command line.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !processes_mentioning(dir.path())
            .iter()
            .any(|(pid, _)| *pid == child.id())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the child was not found"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let report = check(Vec::new(), None, dir.path().to_path_buf(), false);
        assert!(!report.is_clean());
        // The whole group: the shell and its `sleep`.
        let group = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        // The `sleep` is not our child: init reaps it, a moment later on a busy machine.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !processes_mentioning(dir.path()).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the killed group is still there"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(check(Vec::new(), None, dir.path().to_path_buf(), false).is_clean());
    }
}
