//! The thread every reload and compile runs on: one for the process, at a lower CPU priority
//! (nice 10) than the proxy's workers. On a busy core the scheduler then gives a burst of
//! configuration changes the time the proxy leaves over (about a tenth when both want all of
//! it) instead of slices of the proxy's own, so requests keep their latency while routes
//! change. Linux gives a nice value to the one thread that sets it.

use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;
use std::sync::mpsc;

/// How much lower than the workers' the compile thread's priority is.
const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

fn jobs() -> &'static Result<mpsc::Sender<Job>, String> {
    static JOBS: OnceLock<Result<mpsc::Sender<Job>, String>> = OnceLock::new();
    JOBS.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sluice-compile".to_owned())
            .spawn(move || {
                if let Err(e) = rustix::process::setpriority_process(None, NICE) {
                    tracing::warn!(error = %e, "compile thread keeps the workers' priority");
                }
                for job in rx {
                    job();
                }
            })
            .map(|_| tx)
            .map_err(|e| format!("cannot start the compile thread: {e}"))
    })
}

/// Runs `work` on the compile thread and returns what it returns; `Err` if it panicked (the
/// thread goes on with the next job) or the thread could not be started.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(work)));
    });
    jobs()
        .as_ref()
        .map_err(Clone::clone)?
        .send(job)
        .map_err(|_| "the compile thread is gone".to_owned())?;
    match rx.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(panic)) => Err(panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "compile panicked".to_owned())),
        Err(_) => Err("the compile thread is gone".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_compile_thread_at_a_lower_priority() {
        let (name, nice) = run(|| {
            let name = std::thread::current().name().map(str::to_owned);
            (name, rustix::process::getpriority_process(None).ok())
        })
        .await
        .expect("the job runs");
        assert_eq!(name.as_deref(), Some("sluice-compile"));
        // The test's own thread keeps its priority; the compile thread's is 10 (or lower still,
        // if the test runs at a lower one: raising a priority takes a privilege).
        let own = rustix::process::getpriority_process(None).expect("own priority");
        assert_eq!(nice, Some(own.max(NICE)));
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_thread_goes_on() {
        let failed = run(|| -> u32 { panic!("bad input") }).await;
        assert_eq!(failed, Err("bad input".to_owned()));
        assert_eq!(run(|| 7).await, Ok(7));
    }
}
