//! The crash tests' child process: the test binary itself, re-executed to run one test (the
//! child body, a no-op unless its environment variables are set), printing a line per
//! durable step, killed by the parent at a chosen moment.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

/// A running child; killed and reaped however the test ends.
pub struct Child {
    process: std::process::Child,
    lines: Receiver<String>,
    /// Reads the child's stdout into `lines`, so that a stuck child fails the test instead
    /// of hanging it.
    reader: Option<JoinHandle<()>>,
}

impl Child {
    /// Runs this test binary's test `test_name` alone, with `env` set.
    pub fn spawn(test_name: &str, env: &[(&str, String)]) -> Child {
        let mut process = Command::new(std::env::current_exe().unwrap())
            .args([
                test_name,
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "--quiet",
            ])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = process.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Child {
            process,
            lines,
            reader: Some(reader),
        }
    }

    /// The child's next line of output (the test harness prints lines of its own too);
    /// panics with the child's stderr if none comes within `wait` or the child ended.
    pub fn next_line(&mut self, wait: Duration, round: u64) -> String {
        match self.lines.recv_timeout(wait) {
            Ok(line) => line,
            Err(why) => {
                let _ = self.process.kill();
                let _ = self.process.wait();
                let mut err = String::new();
                if let Some(mut stderr) = self.process.stderr.take() {
                    let _ = stderr.read_to_string(&mut err);
                }
                let what = match why {
                    RecvTimeoutError::Timeout => format!("printed nothing for {wait:?}"),
                    RecvTimeoutError::Disconnected => "exited early".to_string(),
                };
                panic!("round {round}: child {what}: {err}");
            }
        }
    }

    /// Sleeps `delay`, SIGKILLs the child and returns every line it printed before dying
    /// and not yet read: they report steps that completed too.
    pub fn kill_after(mut self, delay: Duration) -> Vec<String> {
        std::thread::sleep(delay);
        self.process.kill().unwrap();
        self.process.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.lines.try_iter().collect()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
