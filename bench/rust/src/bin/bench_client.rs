//! foorpc's Rust client under test.
//!
//! Usage: `bench_client ADDRESS WHAT N [ARG]`, WHAT one of
//! - `seq N`: N sequential `add(1, 2)` calls; prints `seq_p50_ns`, `seq_p99_ns`;
//! - `slices N`: the same calls, driven slice by slice from stdin (`Slices`);
//! - `pipe N WINDOW`: N `add(1, 2)` calls with WINDOW in flight on one
//!   connection (call_async + wait, sliding window); prints `pipe_calls_per_s`;
//! - `pipebatch N WINDOW`: call_async + wait as the raw C floor pipelines:
//!   after waiting for the oldest reply, every reply already read is
//!   collected (`wait_for(0)`) and as many new calls go out corked, in one
//!   write; prints `pipe_calls_per_s`;
//! - `pipecb N WINDOW`: the same, each completion callback sending the next
//!   call (call_async + on_complete); prints `pipe_calls_per_s`;
//! - `echo N BYTES`: N sequential `echo(bin)` calls; prints `echo_mib_per_s`
//!   (payload MiB carried one way per second).
//!
//! Each command first runs a short warm-up that is not measured.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use foorpc::{Client, Value};

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// How a seq run is told what to do.
enum Slices {
    /// `seq N`: a warm-up of N/10 (at least 100) calls, then N timed ones.
    Once(usize),
    /// `slices N`: stdin lines `warm K` / `run K` ask for K calls (`run` ones
    /// timed), each answered `ok`; this lets the bench driver interleave the
    /// seq clients so that they all meet the same machine noise.
    FromStdin,
}

/// The next (count, timed) slice, or None when the run is over.
fn next_slice(
    how: &Slices,
    done: usize,
    lines: &mut impl Iterator<Item = String>,
) -> Option<(usize, bool)> {
    match how {
        Slices::Once(n) => match done {
            0 => Some(((n / 10).max(100), false)),
            1 => Some((*n, true)),
            _ => None,
        },
        Slices::FromStdin => {
            let line = lines.next()?;
            let (word, k) = line
                .trim()
                .split_once(' ')
                .expect("slices: `warm K` or `run K`");
            let k: usize = k.parse().expect("slices: count");
            match word {
                "warm" => Some((k, false)),
                "run" => Some((k, true)),
                _ => panic!("slices: bad line {line:?}"),
            }
        }
    }
}

/// Sequential timed calls of `one_call`; prints p50 and p99 of the timed ones
/// (at most `cap` of them).
fn run_seq(how: Slices, cap: usize, mut one_call: impl FnMut()) {
    let mut lines = std::io::stdin().lines().map(|l| l.expect("stdin"));
    let mut lat = Vec::with_capacity(cap);
    let mut slice = 0;
    while let Some((k, timed)) = next_slice(&how, slice, &mut lines) {
        for _ in 0..k {
            let t = Instant::now();
            one_call();
            let d = t.elapsed().as_nanos() as u64;
            if timed && lat.len() < cap {
                lat.push(d);
            }
        }
        if matches!(how, Slices::FromStdin) {
            println!("ok");
            std::io::stdout().flush().expect("stdout");
        }
        slice += 1;
    }
    assert!(!lat.is_empty(), "seq: no timed calls");
    lat.sort_unstable();
    println!("seq_p50_ns {}", percentile(&lat, 0.50));
    println!("seq_p99_ns {}", percentile(&lat, 0.99));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: bench_client ADDRESS seq|pipe|echo N [WINDOW|BYTES]");
        std::process::exit(2);
    }
    let client = Client::connect(&args[1]).unwrap_or_else(|e| {
        eprintln!("bench_client: connect: {e}");
        std::process::exit(1)
    });
    let n: usize = args[3].parse().expect("N");
    let extra: usize = args.get(4).map_or(0, |s| s.parse().expect("number"));
    let params = [Value::from(1), Value::from(2)];
    let add = |c: &Client| {
        let v = c.call_value("add", &params, None).expect("add");
        debug_assert_eq!(v.as_i64(), Some(3));
    };
    match args[2].as_str() {
        "seq" => run_seq(Slices::Once(n), n, || add(&client)),
        "slices" => run_seq(Slices::FromStdin, n, || add(&client)),
        "pipe" => {
            let window = extra.max(1);
            let run = |count: usize| {
                let mut inflight = VecDeque::with_capacity(window);
                for _ in 0..count {
                    if inflight.len() == window {
                        let call: foorpc::PendingCall = inflight.pop_front().unwrap();
                        call.wait().expect("add");
                    }
                    inflight.push_back(client.call_async("add", &params, None).expect("send"));
                }
                for call in inflight {
                    call.wait().expect("add");
                }
            };
            run((n / 10).max(window * 4));
            let t = Instant::now();
            run(n);
            let secs = t.elapsed().as_secs_f64();
            println!("pipe_calls_per_s {:.0}", n as f64 / secs);
        }
        "pipebatch" => {
            let window = extra.max(1);
            let run = |count: usize| {
                let mut inflight: VecDeque<foorpc::PendingCall> = VecDeque::with_capacity(window);
                let (mut sent, mut done) = (0, 0);
                while done < count {
                    let free = window - inflight.len();
                    let more = free.min(count - sent);
                    if more > 0 {
                        client.cork();
                        for _ in 0..more {
                            inflight
                                .push_back(client.call_async("add", &params, None).expect("send"));
                        }
                        client.uncork();
                        sent += more;
                    }
                    inflight.pop_front().unwrap().wait().expect("add");
                    done += 1;
                    // Collect what that read brought in, without waiting.
                    while let Some(call) = inflight.front_mut() {
                        match call.wait_for(Duration::ZERO) {
                            Some(r) => {
                                r.expect("add");
                                inflight.pop_front();
                                done += 1;
                            }
                            None => break,
                        }
                    }
                }
            };
            run((n / 10).max(window * 4));
            let t = Instant::now();
            run(n);
            let secs = t.elapsed().as_secs_f64();
            println!("pipe_calls_per_s {:.0}", n as f64 / secs);
        }
        "pipecb" => {
            let window = extra.max(1);
            let run = |count: usize| {
                let (tx, rx) = mpsc::channel();
                let st = Arc::new(Callbacks {
                    issued: AtomicUsize::new(0),
                    done: AtomicUsize::new(0),
                    count,
                    finished: Mutex::new(Some(tx)),
                });
                for _ in 0..window {
                    issue(&client, &st);
                }
                rx.recv().expect("all calls done");
            };
            run((n / 10).max(window * 4));
            let t = Instant::now();
            run(n);
            let secs = t.elapsed().as_secs_f64();
            println!("pipe_calls_per_s {:.0}", n as f64 / secs);
        }
        "echo" => {
            let payload = Value::Binary(vec![0xab; extra.max(1)]);
            let params = [payload];
            let call = || {
                let v = client.call_value("echo", &params, None).expect("echo");
                assert_eq!(v.as_slice().map(<[u8]>::len), Some(extra.max(1)));
            };
            for _ in 0..(n / 10).max(3) {
                call();
            }
            let t = Instant::now();
            for _ in 0..n {
                call();
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "echo_mib_per_s {:.1}",
                (n * extra.max(1)) as f64 / secs / (1024.0 * 1024.0)
            );
        }
        other => {
            eprintln!("bench_client: unknown benchmark {other}");
            std::process::exit(2);
        }
    }
}

/// Shared by the completion callbacks of `pipecb`.
struct Callbacks {
    issued: AtomicUsize,
    done: AtomicUsize,
    count: usize,
    finished: Mutex<Option<mpsc::Sender<()>>>,
}

/// Sends one more `add(1, 2)` unless `count` are sent; its callback (on
/// foorpc's I/O thread) sends the next, so the window stays full.
fn issue(client: &Client, st: &Arc<Callbacks>) {
    if st.issued.fetch_add(1, Ordering::Relaxed) >= st.count {
        return;
    }
    let pending = client
        .call_async("add", &[Value::from(1), Value::from(2)], None)
        .expect("send");
    let (client, st) = (client.clone(), st.clone());
    pending.on_complete(move |r| {
        r.expect("add");
        if st.done.fetch_add(1, Ordering::Relaxed) + 1 == st.count {
            if let Some(tx) = st.finished.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
        issue(&client, &st);
    });
}
