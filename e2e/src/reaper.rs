//! A last-resort reaper for when the harness itself dies without running its teardown
//! (SIGKILL, an abort, a CI timeout): a small `sh` process that learns the pid of every
//! component through a pipe and, when the pipe closes (the harness is gone, however it
//! went), stops what is still registered, newest first, with the same SIGTERM, grace,
//! SIGKILL sequence. A normal teardown unregisters every component it stopped and then
//! closes the pipe, so the reaper exits having done nothing.
//!
//! The components run in their own process groups (see `process`), so nothing else would
//! stop them once the harness is gone.

use std::{
    io::Write,
    os::unix::process::CommandExt,
    process::{Child, ChildStdin, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

/// `+PID` registers, `-PID` unregisters; on end of input the registered groups are stopped,
/// each given `$1` tenths of a second between SIGTERM and SIGKILL.
const SCRIPT: &str = r#"
pids=""
while read -r line; do
  case "$line" in
    +*) pids="${line#+} $pids" ;;
    -*) p="${line#-}"; keep=""
        for x in $pids; do [ "$x" = "$p" ] || keep="$keep $x"; done
        pids="$keep" ;;
  esac
done
# A group leader that has exited but not yet been reaped (a zombie) counts as gone.
alive() {
  st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
  [ -n "$st" ] && [ "$st" != Z ]
}
for p in $pids; do
  kill -TERM "-$p" 2>/dev/null || continue
  i=0
  while alive "$p" && [ "$i" -lt "$1" ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "-$p" 2>/dev/null
done
"#;

/// The reaper process and the write end of its pipe.
#[derive(Debug)]
pub struct Reaper {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Reaper {
    /// Starts the reaper (in its own process group, so a Ctrl-C does not end it before
    /// it has done its job); it gives each component `grace` between SIGTERM and SIGKILL.
    pub fn start(grace: Duration) -> Result<Self> {
        let tenths = (grace.as_millis() / 100).max(1).to_string();
        let mut child = Command::new("sh")
            .args(["-c", SCRIPT, "reaper", &tenths])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the reaper (sh)")?;
        let pipe = child.stdin.take();
        Ok(Self { child, pipe })
    }

    /// The reaper's own pid (it is a process the harness started, too).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Registers a component's process group.
    pub fn watch(&mut self, pid: u32) {
        self.send(&format!("+{pid}\n"));
    }

    /// Unregisters a component that was stopped normally (its pid may be reused).
    pub fn unwatch(&mut self, pid: u32) {
        self.send(&format!("-{pid}\n"));
    }

    fn send(&mut self, line: &str) {
        if let Some(pipe) = &mut self.pipe
            && pipe.write_all(line.as_bytes()).is_err()
        {
            // The reaper is gone; the normal teardown still stops everything.
            self.pipe = None;
        }
    }

    /// Closes the pipe and waits for the reaper to exit.
    pub fn finish(&mut self) {
        self.pipe = None;
        let _ = self.child.wait();
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Process;
    use std::path::Path;

    #[test]
    fn stops_what_is_registered_when_the_pipe_closes() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut kept = Process::spawn("kept", cmd, &dir.path().join("a.log")).unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut other = Process::spawn("other", cmd, &dir.path().join("b.log")).unwrap();

        let mut reaper = Reaper::start(Duration::from_millis(200)).unwrap();
        reaper.watch(kept.pid());
        reaper.watch(other.pid());
        reaper.unwatch(other.pid());
        reaper.finish();

        // `kept` was registered: the reaper stopped it. `other` was unregistered.
        let s = kept.stop(Duration::from_millis(10));
        assert!(
            matches!(s.ending, crate::process::Ending::ExitedEarly(_)),
            "{:?}",
            s.ending
        );
        other.check_running().unwrap();
        other.stop(Duration::from_secs(2));
        assert!(!Path::new(&format!("/proc/{}", reaper.pid())).exists());
    }
}
