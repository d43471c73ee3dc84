//! Work of one connection that must run in arrival order but may block:
//! its jobs go to the worker pool one at a time, so a slow one holds up only
//! the later ones of the same connection, never the I/O thread or the other
//! connections.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::pool::{Job, Pool};

/// Jobs run back to back on one pool thread before it goes back to the
/// pool's queue, so that one busy connection does not keep a thread for
/// itself while others wait.
const JOBS_PER_TURN: usize = 64;

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// A pool thread runs (or is about to run) this queue's jobs.
    scheduled: bool,
}

/// A first-in, first-out queue of jobs run one after another on the pool.
#[derive(Default)]
pub(crate) struct SerialQueue {
    state: Mutex<State>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SerialQueue {
    /// Runs `job` once every job pushed before it has run.
    pub(crate) fn push(self: &Arc<Self>, job: Job) {
        let mut st = lock(&self.state);
        st.jobs.push_back(job);
        if !std::mem::replace(&mut st.scheduled, true) {
            drop(st);
            self.schedule();
        }
    }

    /// No job waits or runs.
    pub(crate) fn is_idle(&self) -> bool {
        !lock(&self.state).scheduled
    }

    fn schedule(self: &Arc<Self>) {
        let queue = self.clone();
        Pool::global().execute(Box::new(move || queue.run_turn()));
    }

    fn run_turn(self: Arc<Self>) {
        for _ in 0..JOBS_PER_TURN {
            let job = {
                let mut st = lock(&self.state);
                match st.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        st.scheduled = false;
                        return;
                    }
                }
            };
            // A panicking job must not stop the ones after it.
            let _ = catch_unwind(AssertUnwindSafe(job));
        }
        self.schedule(); // more may be left: take a new turn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn jobs_run_in_order_one_at_a_time_and_survive_a_panic() {
        let queue = Arc::new(SerialQueue::default());
        let (tx, rx) = mpsc::channel();
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for i in 0..200 {
            let (tx, running) = (tx.clone(), running.clone());
            queue.push(Box::new(move || {
                let before = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i % 50 == 7 {
                    running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    panic!("job {i} fails");
                }
                std::thread::yield_now();
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                tx.send((i, before)).unwrap();
            }));
        }
        let got: Vec<(i32, usize)> = (0..196)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        let order: Vec<i32> = got.iter().map(|(i, _)| *i).collect();
        let expected: Vec<i32> = (0..200).filter(|i| i % 50 != 7).collect();
        assert_eq!(order, expected);
        assert!(
            got.iter().all(|(_, others)| *others == 0),
            "two jobs ran at once"
        );
    }
}
