//! A child process that cannot outlive the test process.
//!
//! The command runs under `sh`, which keeps the read end of a pipe whose write end only
//! this process holds. When the write end closes (the guard drops, or the test process
//! exits or dies, which also happens to guards in a `static`), the watchdog sends the
//! command SIGTERM, waits for it and exits with its status.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::Duration;

const WATCHDOG: &str = r#"
exec 3<&0 0</dev/null
"$@" 3<&- &
child=$!
( read _ <&3; kill -TERM "$child" 2>/dev/null ) &
watcher=$!
exec 3<&-
wait "$child"; status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"#;

pub struct Proc {
    pub name: String,
    child: Child,
    lifeline: Option<ChildStdin>,
    log: PathBuf,
}

impl Proc {
    /// Starts `program args` with `env` added, output (both streams) to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Proc {
        let out =
            std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log handle");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({}): {e}", program.display()));
        let lifeline = child.stdin.take();
        Proc {
            name: name.to_string(),
            child,
            lifeline,
            log: log.to_path_buf(),
        }
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM and wait (killing the watchdog after `grace`); the command's exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.lifeline = None;
        if crate::wait_until(grace, || matches!(self.child.try_wait(), Ok(Some(_)))) {
            return self.child.try_wait().ok().flatten();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// The whole output so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// The last `n` lines of output, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- last lines of {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            lines[lines.len().saturating_sub(n)..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
