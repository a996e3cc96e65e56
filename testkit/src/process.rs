//! Child processes that cannot outlive their test.
//!
//! A [`ChildGuard`] stops its child when dropped, so a failing assertion (a panic) still ends
//! it: SIGTERM first, so the child can clean up (a daemon drains, the WAN lab removes its
//! namespaces), then SIGKILL after a grace period. On Linux the child also gets SIGTERM from the
//! kernel if the thread that spawned it dies first (the test process was killed, or a watchdog
//! gave up on a body), so no daemon is left behind holding a port.
//!
//! Must not touch: processes this test did not start.

use std::io;
use std::process::{Child, Command, ExitStatus, Output};
use std::thread;
use std::time::{Duration, Instant};

/// A running child process, stopped when the guard is dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    grace: Duration,
}

impl ChildGuard {
    /// Spawns `command` under a guard with a 10 s grace between SIGTERM and SIGKILL. Keep the
    /// guard on the thread that spawned it (or one that outlives it): on Linux the child is
    /// sent SIGTERM when the spawning thread ends.
    pub fn spawn(command: &mut Command) -> io::Result<ChildGuard> {
        #[cfg(target_os = "linux")]
        stop_with_parent(command);
        Ok(ChildGuard {
            child: Some(command.spawn()?),
            grace: Duration::from_secs(10),
        })
    }

    /// How long the child may take to exit after SIGTERM before it is killed.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The child's process id.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The child, e.g. to take its stdout; `None` once it was waited for.
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Sends `signal` to the child if it has not been waited for.
    pub fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child
            && let Ok(pid) = libc::pid_t::try_from(child.id())
        {
            // SAFETY: kill(2) on our own child's pid, which stays reserved until we wait for it.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Waits up to `limit` for the child to exit; its status, or `None` if it still runs.
    /// After an exit the guard holds no child.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// SIGTERM, and the exit status if the child exits within `limit`.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_timeout(limit)
    }

    /// Waits up to `limit` for the child to exit on its own, kills it if it has not, and
    /// returns its status and what it wrote to its piped stdout and stderr.
    pub fn output_within(mut self, limit: Duration) -> io::Result<Output> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| io::Error::other("the child was already waited for"))?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
            }
        }
        let _ = child.kill();
        child.wait_with_output()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        let grace = self.grace;
        if self.terminate(grace).is_none()
            && let Some(mut child) = self.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Asks the kernel to send the child SIGTERM when the spawning thread dies.
#[cfg(target_os = "linux")]
fn stop_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl(2) and
    // getppid(2), which are async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect: then nobody will signal us.
            if libc::getppid() != parent {
                return Err(io::Error::other("the test process exited during spawn"));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> Command {
        let mut command = Command::new("sleep");
        command.arg("300");
        command
    }

    fn alive(pid: u32) -> bool {
        // /proc/<pid> goes once the (reaped) process is gone.
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn a_dropped_guard_stops_its_child() {
        let guard = ChildGuard::spawn(&mut sleeper()).unwrap();
        let pid = guard.id().unwrap();
        assert!(alive(pid));
        drop(guard);
        assert!(!alive(pid), "the child outlived its guard");
    }

    #[test]
    fn a_panicking_test_still_stops_its_child() {
        let pid = std::sync::Mutex::new(0);
        let outcome = std::panic::catch_unwind(|| {
            let guard = ChildGuard::spawn(&mut sleeper()).unwrap();
            *pid.lock().unwrap() = guard.id().unwrap();
            panic!("an assertion failed");
        });
        assert!(outcome.is_err());
        assert!(!alive(*pid.lock().unwrap()));
    }

    #[test]
    fn a_child_ignoring_sigterm_is_killed_after_the_grace() {
        let mut command = Command::new("sh");
        // Short sleeps, so the shell's last one ends by itself soon after the shell is killed.
        command
            .args(["-c", "trap '' TERM; while :; do sleep 0.05; done"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let guard = ChildGuard::spawn(&mut command)
            .unwrap()
            .with_grace(Duration::from_millis(300));
        let pid = guard.id().unwrap();
        thread::sleep(Duration::from_millis(100)); // let the shell install its trap
        let started = Instant::now();
        drop(guard);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(!alive(pid));
    }

    #[test]
    fn terminate_reports_the_exit_status() {
        let mut command = Command::new("sh");
        command.args(["-c", "exit 3"]);
        let mut guard = ChildGuard::spawn(&mut command).unwrap();
        let status = guard.wait_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(guard.id(), None);
        let mut guard = ChildGuard::spawn(&mut sleeper()).unwrap();
        let status = guard.terminate(Duration::from_secs(10)).unwrap();
        assert!(!status.success());
    }

    #[test]
    fn output_within_collects_output_and_stops_a_child_that_runs_on() {
        let mut command = Command::new("sh");
        command
            .args(["-c", "echo out; echo err >&2; exit 4"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let output = ChildGuard::spawn(&mut command)
            .unwrap()
            .output_within(Duration::from_secs(10))
            .unwrap();
        assert_eq!(output.status.code(), Some(4));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");

        let started = Instant::now();
        let output = ChildGuard::spawn(&mut sleeper())
            .unwrap()
            .output_within(Duration::from_millis(200))
            .unwrap();
        assert!(!output.status.success());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_child_stops_when_its_spawning_thread_dies() {
        // The guard is leaked on a thread that then ends, as when a test process is killed.
        let pid = thread::spawn(|| {
            let guard = ChildGuard::spawn(&mut sleeper()).unwrap();
            let pid = guard.id().unwrap();
            std::mem::forget(guard);
            pid
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Not reaped (its guard was forgotten), so it lingers as a zombie: check its state.
        let state = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next().map(|r| r.trim().chars().next()))
                .flatten()
        };
        while state().is_some_and(|c| c != 'Z') && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(state().is_none_or(|c| c == 'Z'), "child still runs");
        // Reap it.
        // SAFETY: waitpid on our own child's pid.
        unsafe {
            libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
        }
    }
}
