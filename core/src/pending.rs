//! Calls waiting for their replies: the msgid allocator and the in-flight table.
//!
//! A [`CallSlot`] is where a reply lands. It wakes whoever waits on it: a thread
//! blocked in a synchronous call, a `Future`'s waker, or a completion callback.

use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::fasthash::FastState;
use crate::Value;

/// A completion callback; runs once, on the thread that completes the call.
pub(crate) type Callback = Box<dyn Completion>;

/// What a completion callback holds, and how it runs.
pub(crate) trait Completion: Send {
    fn complete(self: Box<Self>, outcome: Result<Value>);
    /// What the callback holds, for [`Pending::visit_callbacks`] (`()` for
    /// a plain closure).
    fn data(&self) -> &dyn Any;
}

/// A plain closure as a completion: it shows nothing of what it holds.
pub(crate) struct ClosureCompletion<F>(pub F);

impl<F: FnOnce(Result<Value>) + Send> Completion for ClosureCompletion<F> {
    fn complete(self: Box<Self>, outcome: Result<Value>) {
        (self.0)(outcome)
    }

    fn data(&self) -> &dyn Any {
        &()
    }
}

/// A completion that keeps its data where [`Pending::visit_callbacks`]
/// can see it, and hands it to `run` with the outcome.
pub(crate) struct DataCompletion<T> {
    pub data: T,
    pub run: fn(T, Result<Value>),
}

impl<T: Send + 'static> Completion for DataCompletion<T> {
    fn complete(self: Box<Self>, outcome: Result<Value>) {
        (self.run)(self.data, outcome)
    }

    fn data(&self) -> &dyn Any {
        &self.data
    }
}

enum Outcome {
    Waiting,
    Ready(Result<Value>),
    Taken,
}

struct SlotState {
    outcome: Outcome,
    /// A thread waits for this call (it may be reading the socket itself).
    thread_waiting: bool,
    /// That thread is asleep on the condvar: only then is a wake-up (a
    /// futex syscall) needed.
    sleeping: bool,
    /// The reading role was handed to the waiting thread.
    promoted: bool,
    waker: Option<Waker>,
    callback: Option<Callback>,
}

/// Where one call's reply lands.
pub(crate) struct CallSlot {
    state: Mutex<SlotState>,
    cv: Condvar,
    /// When the call times out, if it does.
    deadline: Option<Instant>,
    /// The caller wants the result's MessagePack bytes (as `Value::Binary`).
    raw: bool,
}

/// Why [`CallSlot::wait`] returned.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The outcome is ready (or the deadline passed, or the cap elapsed): look again.
    Look,
    /// Another thread handed over the reading role: try to lead.
    Promoted,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (each
    // critical section is a few assignments), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CallSlot {
    /// A slot for a call timing out at `deadline`; its result arrives
    /// encoded (as `Value::Binary`) when `raw` is set.
    pub(crate) fn new(deadline: Option<Instant>, raw: bool) -> Arc<CallSlot> {
        Arc::new(CallSlot {
            deadline,
            raw,
            state: Mutex::new(SlotState {
                outcome: Outcome::Waiting,
                thread_waiting: false,
                sleeping: false,
                promoted: false,
                waker: None,
                callback: None,
            }),
            cv: Condvar::new(),
        })
    }

    /// Delivers the outcome; later deliveries are ignored.
    pub(crate) fn complete(&self, result: Result<Value>) {
        let mut st = lock(&self.state);
        if !matches!(st.outcome, Outcome::Waiting) {
            return;
        }
        if let Some(cb) = st.callback.take() {
            st.outcome = Outcome::Taken;
            drop(st);
            // The callback runs on the thread that read the reply, usually
            // in the middle of a batch: a panic must not unwind through the
            // reader (leaving its lock poisoned and the rest of the batch
            // undelivered). The panic hook has reported it already.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb.complete(result)));
            return;
        }
        st.outcome = Outcome::Ready(result);
        let waker = st.waker.take();
        let sleeping = st.sleeping;
        drop(st);
        if sleeping {
            self.cv.notify_one();
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Takes the outcome if it is there.
    pub(crate) fn try_take(&self) -> Option<Result<Value>> {
        let mut st = lock(&self.state);
        match std::mem::replace(&mut st.outcome, Outcome::Taken) {
            Outcome::Ready(r) => Some(r),
            other => {
                st.outcome = other;
                None
            }
        }
    }

    pub(crate) fn is_waiting(&self) -> bool {
        matches!(lock(&self.state).outcome, Outcome::Waiting)
    }

    /// Marks a thread as about to wait here, so that a promotion is not lost.
    pub(crate) fn mark_waiting(&self) {
        lock(&self.state).thread_waiting = true;
    }

    /// Blocks until the outcome is ready, the reading role is handed over, or `until`.
    pub(crate) fn wait(&self, until: Instant) -> Wake {
        let mut st = lock(&self.state);
        st.thread_waiting = true;
        loop {
            if !matches!(st.outcome, Outcome::Waiting) {
                break;
            }
            if std::mem::take(&mut st.promoted) {
                st.thread_waiting = false;
                return Wake::Promoted;
            }
            let now = Instant::now();
            if now >= until {
                break;
            }
            st.sleeping = true;
            st = self
                .cv
                .wait_timeout(st, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            st.sleeping = false;
        }
        st.thread_waiting = false;
        Wake::Look
    }

    /// Hands the reading role to the thread waiting here; false if none waits.
    fn promote(&self) -> bool {
        let mut st = lock(&self.state);
        if !st.thread_waiting || !matches!(st.outcome, Outcome::Waiting) {
            return false;
        }
        st.promoted = true;
        let sleeping = st.sleeping;
        drop(st);
        if sleeping {
            self.cv.notify_one();
        }
        true
    }

    /// Registers a waker; returns the outcome instead when it is already there.
    pub(crate) fn set_waker(&self, waker: &Waker) -> Option<Result<Value>> {
        let mut st = lock(&self.state);
        match std::mem::replace(&mut st.outcome, Outcome::Taken) {
            Outcome::Ready(r) => Some(r),
            Outcome::Waiting => {
                st.outcome = Outcome::Waiting;
                st.waker = Some(waker.clone());
                None
            }
            Outcome::Taken => Some(Err(Error::Usage(
                "the call's result was already taken".into(),
            ))),
        }
    }

    /// Registers a callback; runs it at once when the outcome is already there.
    pub(crate) fn set_callback(&self, cb: Callback) {
        let mut st = lock(&self.state);
        match std::mem::replace(&mut st.outcome, Outcome::Taken) {
            Outcome::Ready(r) => {
                drop(st);
                cb.complete(r);
            }
            Outcome::Waiting => {
                st.outcome = Outcome::Waiting;
                st.callback = Some(cb);
            }
            Outcome::Taken => {}
        }
    }
}

/// Calls by msgid (see `fasthash` for why not SipHash).
type Calls = HashMap<u32, Arc<CallSlot>, FastState>;

/// True when the deadline entry `(deadline, id)` belongs to a call still in
/// flight (and not to an earlier call that had the same msgid).
fn is_live(calls: &Calls, id: u32, deadline: Instant) -> bool {
    calls.get(&id).is_some_and(|s| s.deadline == Some(deadline))
}

/// The in-flight table of one connection.
pub(crate) struct Pending {
    calls: Calls,
    /// Deadlines of the calls above, earliest on top, for expiry by a
    /// reactor or event loop. An entry stays when its call leaves (a push
    /// and nothing else per call, where an ordered set would rebalance
    /// twice); stale entries are dropped when they reach the top, and all of
    /// them once they outnumber the live ones.
    deadlines: BinaryHeap<Reverse<(Instant, u32)>>,
    next_id: u32,
    max: usize,
    closed: Option<Error>,
}

impl Pending {
    pub(crate) fn new(max: usize) -> Pending {
        Pending {
            calls: HashMap::default(),
            deadlines: BinaryHeap::new(),
            next_id: 0,
            max,
            closed: None,
        }
    }

    /// Allocates a msgid (wrapping at u32, skipping ids still in flight) for `slot`.
    pub(crate) fn insert(&mut self, slot: Arc<CallSlot>) -> Result<u32> {
        if let Some(e) = &self.closed {
            return Err(e.clone());
        }
        if self.calls.len() >= self.max {
            return Err(Error::LimitExceeded(format!(
                "{} calls already in flight on this connection",
                self.max
            )));
        }
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if let std::collections::hash_map::Entry::Vacant(v) = self.calls.entry(id) {
                if let Some(d) = slot.deadline {
                    self.deadlines.push(Reverse((d, id)));
                }
                v.insert(slot);
                return Ok(id);
            }
        }
    }

    /// Removes and returns the call with this msgid (reply arrived, expired or cancelled).
    pub(crate) fn take(&mut self, msgid: u32) -> Option<Arc<CallSlot>> {
        let slot = self.calls.remove(&msgid)?;
        if self.deadlines.len() > 2 * self.calls.len() + 64 {
            let calls = &self.calls;
            self.deadlines
                .retain(|Reverse((d, id))| is_live(calls, *id, *d));
        }
        Some(slot)
    }

    /// True when the call `msgid` wants its result encoded.
    pub(crate) fn wants_raw(&self, msgid: u32) -> bool {
        self.calls.get(&msgid).is_some_and(|s| s.raw)
    }

    /// The earliest deadline of a call in flight.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((d, id))) = self.deadlines.peek() {
            if is_live(&self.calls, id, d) {
                return Some(d);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Removes and returns the calls whose deadline is at or before `now`.
    pub(crate) fn take_expired(&mut self, now: Instant) -> Vec<Arc<CallSlot>> {
        let mut expired = Vec::new();
        while let Some(&Reverse((d, id))) = self.deadlines.peek() {
            if d > now {
                break;
            }
            self.deadlines.pop();
            if is_live(&self.calls, id, d) {
                expired.extend(self.calls.remove(&id));
            }
        }
        expired
    }

    /// Marks the table closed and returns every pending call, for the caller to fail.
    pub(crate) fn close(&mut self, reason: Error) -> Vec<Arc<CallSlot>> {
        if self.closed.is_none() {
            self.closed = Some(reason);
        }
        self.forget_all()
    }

    /// Shows `f` the data of each pending call's completion callback of
    /// type `T`. Never waits: a call whose slot is locked right now is
    /// skipped.
    pub(crate) fn visit_callbacks<T: 'static>(&self, mut f: impl FnMut(&T)) {
        for slot in self.calls.values() {
            if let Ok(st) = slot.state.try_lock() {
                if let Some(data) = st.callback.as_ref().and_then(|cb| cb.data().downcast_ref()) {
                    f(data);
                }
            }
        }
    }

    /// Forgets every pending call without completing it: their callbacks
    /// are dropped unrun, and late replies are ignored.
    pub(crate) fn forget_all(&mut self) -> Vec<Arc<CallSlot>> {
        self.deadlines.clear();
        self.calls.drain().map(|(_, s)| s).collect()
    }

    pub(crate) fn closed_reason(&self) -> Option<Error> {
        self.closed.clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.calls.len()
    }

    /// Hands the reading role to one thread blocked waiting for its reply.
    pub(crate) fn promote_one(&self) {
        for slot in self.calls.values() {
            if slot.promote() {
                return;
            }
        }
    }

    #[cfg(test)]
    fn set_next_id(&mut self, id: u32) {
        self.next_id = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_wrap_and_skip_live_ones() {
        let mut p = Pending::new(10);
        p.set_next_id(u32::MAX);
        assert_eq!(p.insert(CallSlot::new(None, false)).unwrap(), u32::MAX);
        assert_eq!(p.insert(CallSlot::new(None, false)).unwrap(), 0);
        assert_eq!(p.insert(CallSlot::new(None, false)).unwrap(), 1);
        p.set_next_id(u32::MAX);
        assert_eq!(p.insert(CallSlot::new(None, false)).unwrap(), 2);
    }

    #[test]
    fn limit_and_close() {
        let mut p = Pending::new(2);
        let a = CallSlot::new(None, false);
        p.insert(a.clone()).unwrap();
        p.insert(CallSlot::new(None, false)).unwrap();
        assert!(matches!(
            p.insert(CallSlot::new(None, false)),
            Err(Error::LimitExceeded(_))
        ));
        let all = p.close(Error::ConnectionLost("gone".into()));
        assert_eq!(all.len(), 2);
        assert!(matches!(
            p.insert(CallSlot::new(None, false)),
            Err(Error::ConnectionLost(_))
        ));
    }

    #[test]
    fn deadlines_expire_in_order_and_leave_with_their_call() {
        let mut p = Pending::new(10);
        let t0 = Instant::now();
        let ms = std::time::Duration::from_millis;
        let late = p.insert(CallSlot::new(Some(t0 + ms(30)), false)).unwrap();
        let early = p.insert(CallSlot::new(Some(t0 + ms(10)), false)).unwrap();
        let gone = p.insert(CallSlot::new(Some(t0 + ms(20)), false)).unwrap();
        p.insert(CallSlot::new(None, false)).unwrap();
        assert_eq!(p.next_deadline(), Some(t0 + ms(10)));
        p.take(gone).unwrap();
        assert_eq!(p.take_expired(t0 + ms(25)).len(), 1);
        assert!(p.take(early).is_none());
        assert_eq!(p.next_deadline(), Some(t0 + ms(30)));
        assert!(p.take(late).is_some());
        assert_eq!(p.next_deadline(), None);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn deadlines_of_finished_calls_do_not_pile_up() {
        let mut p = Pending::new(100);
        let t0 = Instant::now();
        let in_a_minute = t0 + std::time::Duration::from_secs(60);
        let keep = p.insert(CallSlot::new(Some(in_a_minute), false)).unwrap();
        for i in 0..10_000u64 {
            let d = t0 + std::time::Duration::from_millis(i % 50);
            let id = p.insert(CallSlot::new(Some(d), false)).unwrap();
            p.take(id).unwrap();
            assert!(p.deadlines.len() <= 2 * p.len() + 65);
        }
        // Every stale entry is earlier than the live one, and none expires a call.
        assert!(p
            .take_expired(t0 + std::time::Duration::from_secs(1))
            .is_empty());
        assert_eq!(p.next_deadline(), Some(in_a_minute));
        assert_eq!(p.take_expired(in_a_minute).len(), 1);
        assert!(p.take(keep).is_none());
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn complete_once_and_callback() {
        let s = CallSlot::new(None, false);
        s.complete(Ok(Value::from(1)));
        s.complete(Ok(Value::from(2)));
        assert_eq!(s.try_take().unwrap().unwrap(), Value::from(1));
        assert!(s.try_take().is_none());

        let s = CallSlot::new(None, false);
        let (tx, rx) = std::sync::mpsc::channel();
        s.set_callback(Box::new(ClosureCompletion(move |r: Result<Value>| {
            tx.send(r.unwrap()).unwrap()
        })));
        s.complete(Ok(Value::from(7)));
        assert_eq!(rx.recv().unwrap(), Value::from(7));
    }
}
