//! The worker pool that runs handlers which may block.
//!
//! Threads are started on demand (up to a cap) so that a slow handler never
//! delays another call, and idle ones exit after a while. One pool serves the
//! whole process; a child after `fork()` gets a fresh one.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::fork;

pub(crate) type Job = Box<dyn FnOnce() + Send>;

const MAX_THREADS: usize = 512;
const IDLE_EXIT: Duration = Duration::from_secs(30);

struct State {
    queue: VecDeque<Job>,
    idle: usize,
    threads: usize,
}

pub(crate) struct Pool {
    state: Mutex<State>,
    cv: Condvar,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    fn new() -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                idle: 0,
                threads: 0,
            }),
            cv: Condvar::new(),
        })
    }

    /// The process-wide pool.
    pub(crate) fn global() -> Arc<Pool> {
        static GLOBAL: Mutex<Option<(u64, Arc<Pool>)>> = Mutex::new(None);
        let generation = fork::generation();
        let mut g = GLOBAL.lock().unwrap_or_else(|p| p.into_inner());
        match &*g {
            Some((gen, pool)) if *gen == generation => pool.clone(),
            _ => {
                let pool = Pool::new();
                *g = Some((generation, pool.clone()));
                pool
            }
        }
    }

    /// Runs `job` on a pool thread, starting one when none is free.
    pub(crate) fn execute(self: &Arc<Self>, job: Job) {
        let mut st = lock(&self.state);
        st.queue.push_back(job);
        if st.queue.len() <= st.idle {
            drop(st);
            self.cv.notify_one();
            return;
        }
        if st.threads < MAX_THREADS {
            st.threads += 1;
            drop(st);
            let pool = self.clone();
            let spawned = std::thread::Builder::new()
                .name("foorpc-worker".into())
                .spawn(move || pool.work());
            if spawned.is_err() {
                lock(&self.state).threads -= 1;
            }
        }
    }

    fn work(self: Arc<Self>) {
        let mut st = lock(&self.state);
        loop {
            if let Some(job) = st.queue.pop_front() {
                drop(st);
                // A panicking handler must not take the worker down; its
                // responder's Drop has already sent an error reply.
                let _ = catch_unwind(AssertUnwindSafe(job));
                st = lock(&self.state);
                continue;
            }
            st.idle += 1;
            let (guard, timeout) = self
                .cv
                .wait_timeout(st, IDLE_EXIT)
                .unwrap_or_else(|p| p.into_inner());
            st = guard;
            st.idle -= 1;
            if timeout.timed_out() && st.queue.is_empty() {
                st.threads -= 1;
                return;
            }
        }
    }
}
