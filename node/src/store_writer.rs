//! The store writer: one thread, at the process's base priority, that takes the store's write
//! lock for every applied record ([`crate::node::Node::with_store`]).
//!
//! Why a thread of its own. The DNS answer threads read the store under its read lock and run
//! at the process's priority; the runtime's threads run `--background-nice` steps below it
//! ([`crate::priority`]). A gossiped record used to be applied on the runtime thread that
//! received it. An answer thread woken by a query preempts that thread (it asks for a short
//! slice), and when the runtime thread held the write lock just then, the answer blocked on
//! the lock and the core went to whichever background thread the kernel picked, often not the
//! one holding the lock. At 10⁶ names under 1,000 gossiped updates a second and 90,000 queries
//! a second on one core, an apply holds the lock for about 12 µs of CPU, yet 254 holds in 40 s
//! lasted 150 µs to 4.4 ms (p50 208 µs), and the answers waited behind a writer about 1,700
//! times per 5 s (stop 52, `deploy/dns-lock-bench.sh` with the holds logged).
//!
//! On this thread the holder runs at the answer threads' priority with the same short slice:
//! when an answer blocks on the lock, the holder is the thread the kernel runs next, so an
//! answer waits for the rest of one apply, not for a background thread's slice.
//!
//! Measured side by side (stop 52, `N=1000000 CYCLES=3 ROUNDS=3 deploy/dns-lock-bench.sh`,
//! medians of 9 rounds of 5 s): the answers' waits for the lock fell from 1,729 to 337 a
//! round, their sum from 143.7 to 36.3 ms, those over 1 ms from 11 to 1, and the server-side
//! p99 from 1.111 to 0.876 ms.
//!
//! What it costs: a hand-off per apply (two thread wake-ups, a few µs each); publish-to-last-
//! node propagation (`dpin-bench propagation`) was unchanged beyond its spread at N = 3, 5
//! and 20. The signature check and the encoding stay on the caller
//! ([`dpin_protocol::store::Prepared`]); only the work under the lock runs here, about 1 %
//! of a core at 1,000 updates a second. A catch-up's bulk applies (tens of thousands of
//! records a second) also run here, at the answers' priority where they used to run below
//! it: the answers then share the core with them instead of waiting for the lock behind
//! them, and sync chunks are applied a few records per hold
//! ([`crate::store::apply_in_holds`]).
//!
//! Bounds: at most [`QUEUE`] jobs wait; a caller beyond that waits for room
//! (`Sender::send(..).await`), so a flood of gossip backs up into libp2p's own bounded queues,
//! not into memory here. A job that panics loses its own answer (the caller gets
//! [`WriterError::Lost`]); the thread keeps serving the next ones.

use tokio::sync::{mpsc, oneshot};

/// Most jobs waiting for the writer thread.
pub const QUEUE: usize = 1024;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a job did not run to its answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WriterError {
    /// The writer thread has ended (the node is shutting down).
    #[error("the store writer thread has ended")]
    Gone,
    /// The job panicked; its answer is lost.
    #[error("a store write panicked")]
    Lost,
}

/// Handle to the writer thread; the thread ends once every handle is dropped.
#[derive(Clone, Debug)]
pub struct StoreWriter {
    jobs: mpsc::Sender<Job>,
}

impl StoreWriter {
    /// Starts the thread at the process's base priority ([`crate::priority::spawn_at_base`])
    /// with a scheduling slice of `slice_us` µs (0: the kernel's own;
    /// [`crate::priority::request_slice`]).
    pub fn start(slice_us: u32) -> std::io::Result<Self> {
        let (jobs, mut rx) = mpsc::channel::<Job>(QUEUE);
        crate::priority::spawn_at_base("dpin-store-write".into(), move || {
            if slice_us > 0 {
                if let Err(e) = crate::priority::request_slice(slice_us) {
                    tracing::warn!(%e, slice_us, "could not set the store writer's scheduling slice");
                }
            }
            while let Some(job) = rx.blocking_recv() {
                // A panic drops the job's answer sender, which tells its caller.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the writer thread, after the jobs queued before it, and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WriterError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .await
            .map_err(|_| WriterError::Gone)?;
        rx.await.map_err(|_| WriterError::Lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn jobs_run_in_order_on_one_thread_other_than_the_callers() {
        let writer = StoreWriter::start(0).expect("starts");
        let caller = std::thread::current().id();
        let mut threads = Vec::new();
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut pending = Vec::new();
        for i in 0..50 {
            let (w, order) = (writer.clone(), order.clone());
            pending.push(tokio::spawn(async move {
                w.run(move || {
                    order.lock().expect("not poisoned").push(i);
                    std::thread::current().id()
                })
                .await
            }));
        }
        for p in pending {
            threads.push(p.await.expect("task").expect("ran"));
        }
        assert!(threads.iter().all(|t| *t == threads[0]), "one thread");
        assert_ne!(threads[0], caller, "not the caller's thread");
        let order = order.lock().expect("not poisoned").clone();
        assert_eq!(order, (0..50).collect::<Vec<_>>(), "in the order queued");
    }

    #[tokio::test]
    async fn a_panicking_job_loses_its_answer_and_the_thread_keeps_serving() {
        let writer = StoreWriter::start(0).expect("starts");
        let lost = writer.run(|| -> u32 { panic!("a job that fails") }).await;
        assert_eq!(lost, Err(WriterError::Lost));
        assert_eq!(writer.run(|| 7).await, Ok(7));
    }
}
