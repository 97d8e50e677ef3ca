//! Hooks: operator commands run around a snapshot job (`sh -c`), with a timeout, the
//! job's facts in the environment, and their output kept for the log and the job record.

use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The facts a hook gets as `KURA_*` variables.
#[derive(Clone, Debug, Default)]
pub struct HookEnv {
    pub volume: String,
    pub snapshot: String,
    /// `pre-freeze` or `post-thaw`.
    pub phase: &'static str,
    /// Post-thaw only: `ok`, `failed` or `aborted`.
    pub result: String,
    /// The store's data directory (what a platform snapshot copies).
    pub data_dir: String,
}

/// How a hook ended.
#[derive(Debug)]
pub struct HookRun {
    pub ok: bool,
    /// Why it failed (exit status, signal, timeout, could not start).
    pub failure: Option<String>,
    /// Its stdout and stderr, interleaved as they came, at most [`OUTPUT_MAX`] bytes.
    pub output: String,
}

/// Output kept per hook (the rest is counted, not kept).
pub const OUTPUT_MAX: usize = 64 << 10;

/// Reads up to [`OUTPUT_MAX`] bytes, then drains the rest so that the writer never
/// blocks on a full pipe.
async fn read_capped(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut kept = Vec::new();
    let _ = (&mut *r)
        .take(OUTPUT_MAX as u64)
        .read_to_end(&mut kept)
        .await;
    let mut sink = tokio::io::sink();
    let _ = tokio::io::copy(r, &mut sink).await;
    kept
}

/// Runs `cmd` with `sh -c` in a process group of its own; on timeout the whole group
/// is killed, so a hook's children cannot outlive it.
pub async fn run(cmd: &str, env: &HookEnv, timeout: Duration) -> HookRun {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(cmd)
        .env("KURA_VOLUME", &env.volume)
        .env("KURA_SNAPSHOT", &env.snapshot)
        .env("KURA_PHASE", env.phase)
        .env("KURA_RESULT", &env.result)
        .env("KURA_DATA_DIR", &env.data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            return HookRun {
                ok: false,
                failure: Some(format!("could not start /bin/sh: {e}")),
                output: String::new(),
            }
        }
    };
    let pid = child.id();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let collect = async { tokio::join!(read_capped(&mut out), read_capped(&mut err)) };
    let waited = tokio::time::timeout(timeout, async {
        let (a, b) = collect.await;
        (child.wait().await, a, b)
    })
    .await;
    match waited {
        Ok((status, a, b)) => {
            let mut output = String::from_utf8_lossy(&a).into_owned();
            output.push_str(&String::from_utf8_lossy(&b));
            let failure = match status {
                Ok(s) if s.success() => None,
                Ok(s) => Some(
                    match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                        (Some(c), _) => format!("exited with status {c}"),
                        (None, Some(sig)) => format!("killed by signal {sig}"),
                        _ => format!("ended with {s}"),
                    },
                ),
                Err(e) => Some(format!("waiting for it failed: {e}")),
            };
            HookRun {
                ok: failure.is_none(),
                failure,
                output,
            }
        }
        Err(_) => {
            if let Some(pid) = pid {
                // SAFETY: kill(2) of the process group the hook leads.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            let _ = child.wait().await;
            HookRun {
                ok: false,
                failure: Some(format!(
                    "timed out after {} s and was killed",
                    timeout.as_secs_f64()
                )),
                output: String::new(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HookEnv {
        HookEnv {
            volume: "vol".into(),
            snapshot: "s1".into(),
            phase: "pre-freeze",
            result: String::new(),
            data_dir: "/data".into(),
        }
    }

    #[tokio::test]
    async fn environment_output_status_timeout() {
        let r = run(
            "echo $KURA_VOLUME $KURA_SNAPSHOT $KURA_PHASE; echo oops >&2",
            &env(),
            Duration::from_secs(10),
        )
        .await;
        assert!(r.ok, "{r:?}");
        assert!(r.output.contains("vol s1 pre-freeze"), "{}", r.output);
        assert!(r.output.contains("oops"));
        let r = run("exit 3", &env(), Duration::from_secs(10)).await;
        assert_eq!(r.failure.as_deref(), Some("exited with status 3"));
        // A hook that leaves a child behind is killed with it at the timeout.
        let t0 = std::time::Instant::now();
        let r = run("sleep 30 & sleep 30", &env(), Duration::from_millis(300)).await;
        assert!(!r.ok && r.failure.unwrap().contains("timed out"));
        assert!(t0.elapsed() < Duration::from_secs(10));
        // Output past the limit is dropped, and does not block the hook.
        let r = run(
            "head -c 1000000 /dev/zero | tr '\\\\0' a",
            &env(),
            Duration::from_secs(10),
        )
        .await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.output.len(), OUTPUT_MAX);
    }
}
