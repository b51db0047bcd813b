//! Polling with a deadline, for state that other processes bring about (a node becoming
//! Ready, a pod being scheduled). The error says what was awaited, for how long, and the
//! last thing seen, so a timeout reads as a diagnosis.

use std::{future::Future, time::Duration};

use anyhow::{Result, bail};
use tokio::time::{Instant, sleep};

/// How often [`until`] polls.
pub const POLL: Duration = Duration::from_millis(100);

/// Calls `probe` every [`POLL`] until it returns `Ok(Some(value))` and returns the value.
/// `Ok(None)` means "not yet"; `Err` also means "not yet" (the last one is reported on
/// timeout), since the API server may still be starting.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    until_alive(what, timeout, || Ok(()), probe).await
}

/// [`until`], but first calls `alive` on every poll and gives up at once with its error:
/// for waits that a crashed process would otherwise turn into a long timeout.
pub async fn until_alive<T, A, F, Fut>(
    what: &str,
    timeout: Duration,
    mut alive: A,
    mut probe: F,
) -> Result<T>
where
    A: FnMut() -> Result<()>,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("nothing yet");
    loop {
        alive()?;
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last})");
        }
        sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_ready() {
        let mut n = 0;
        let v = until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            let n = n;
            async move { Ok((n >= 3).then_some(n)) }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn gives_up_at_once_when_not_alive() {
        let err = until_alive::<(), _, _, _>(
            "x",
            Duration::from_secs(60),
            || bail!("etcd exited"),
            || async { Ok(None) },
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "etcd exited");
    }

    #[tokio::test]
    async fn times_out_with_the_last_error() {
        let err = until::<(), _, _>("never", Duration::from_millis(250), || async {
            bail!("still broken")
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("waiting for never"), "{err}");
        assert!(err.contains("still broken"), "{err}");
    }
}
