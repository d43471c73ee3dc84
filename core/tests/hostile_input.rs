//! Hostile or broken input on raw sockets: the offending connection gets an
//! error reply where a msgid is known and is closed on protocol violations;
//! the server and its other connections carry on.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use foorpc::{Client, Message, Server, Value, ERROR_CODE_VALIDATION};

struct Fixture {
    server: Server,
    host_port: String,
    client: Client,
    checks: i64,
}

impl Fixture {
    fn new() -> Fixture {
        let server = start_tcp(calc_router());
        let host_port = tcp_host_port(&server);
        let client = Client::connect(&server.local_addr().to_string()).unwrap();
        let mut f = Fixture {
            server,
            host_port,
            client,
            checks: 0,
        };
        f.normal_client_works();
        f
    }

    fn raw(&self) -> RawPeer<std::net::TcpStream> {
        RawPeer::connect(&self.host_port)
    }

    /// The well-behaved client still gets correct answers.
    fn normal_client_works(&mut self) {
        self.checks += 1;
        let n = self.checks;
        assert_eq!(self.client.call::<i64>("add", (n, 1000)).unwrap(), n + 1000);
        let v = Value::Binary(vec![n as u8; 100]);
        assert_eq!(
            self.client
                .call_value("echo", std::slice::from_ref(&v), CALL)
                .unwrap(),
            v
        );
    }

    /// The server has let go of every connection but the normal client's.
    fn only_normal_client_left(&self) {
        assert!(
            eventually(PROMPT, || self.server.connection_count() == 1),
            "the server still holds {} connections",
            self.server.connection_count()
        );
    }
}

fn assert_closed_promptly(raw: &mut RawPeer<std::net::TcpStream>, what: &str) -> Vec<Message> {
    let start = Instant::now();
    let seen = raw.expect_closed_within(PROMPT);
    assert!(start.elapsed() < PROMPT, "{what}");
    seen
}

#[test]
fn truncated_message_then_close() {
    let mut f = Fixture::new();
    let mut raw = f.raw();
    let full = request_bytes(1, "add", &[Value::from(1), Value::from(2)]);
    raw.send(&full[..full.len() - 3]);
    f.normal_client_works(); // in between: the partial message blocks nobody
    raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
    // The partial message is never processed: no reply, just the close.
    let seen = assert_closed_promptly(&mut raw, "truncated message");
    assert!(seen.is_empty(), "a partial message was answered: {seen:?}");
    f.only_normal_client_left();
    f.normal_client_works();
}

/// Sends `bytes` and the FIN in one TCP segment (MSG_MORE holds the bytes
/// back until the shutdown), so that the server's one readiness event says
/// both "readable" and "closed for reading".
fn send_with_fin(raw: &mut RawPeer<std::net::TcpStream>, bytes: &[u8]) {
    use std::os::fd::AsRawFd;
    // SAFETY: a live socket and a valid buffer of bytes.len() bytes.
    let n = unsafe {
        libc::send(
            raw.stream.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_MORE,
        )
    };
    assert_eq!(n, bytes.len() as isize);
    raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
}

/// With edge-triggered polling, a FIN that comes with the data raises no
/// event of its own: the server must not take the short read of that data
/// for "drained" and miss the end of the stream (each such peer would hold
/// a file descriptor forever).
#[test]
fn data_and_fin_in_one_segment_close_the_connection() {
    let mut f = Fixture::new();
    let full = request_bytes(5, "add", &[Value::from(40), Value::from(2)]);
    for round in 0..10 {
        // A partial message: no reply, only the close.
        let mut raw = f.raw();
        assert!(eventually(PROMPT, || f.server.connection_count() == 2));
        send_with_fin(&mut raw, &full[..3]);
        let seen = assert_closed_promptly(&mut raw, "partial message and FIN");
        assert!(seen.is_empty(), "round {round}: answered {seen:?}");
        f.only_normal_client_left();
        // A whole request: its reply, then the close.
        let mut raw = f.raw();
        assert!(eventually(PROMPT, || f.server.connection_count() == 2));
        send_with_fin(&mut raw, &full);
        let seen = assert_closed_promptly(&mut raw, "request and FIN");
        assert_eq!(seen.len(), 1, "round {round}: {seen:?}");
        f.only_normal_client_left();
    }
    f.normal_client_works();
}

/// The replies that `raw` gets before the server closes the connection,
/// by msgid (the server must close within PROMPT).
fn replies_then_close(raw: &mut RawPeer<std::net::TcpStream>) -> Vec<(u32, Value, Value)> {
    let mut replies: Vec<(u32, Value, Value)> = assert_closed_promptly(raw, "replies, then close")
        .into_iter()
        .map(|m| match m {
            Message::Response {
                msgid,
                error,
                result,
            } => (msgid, error, result),
            other => panic!("not a response: {other:?}"),
        })
        .collect();
    replies.sort_by_key(|r| r.0);
    replies
}

/// A peer that sends requests and then ends its stream (half-close) still
/// gets every reply, including those of handlers still running on the pool;
/// then the connection closes.
#[test]
fn requests_in_flight_are_answered_after_the_peer_ends_its_stream() {
    let mut f = Fixture::new();
    let mut raw = f.raw();
    let mut bytes = request_bytes(1, "sleep_ms", &[Value::from(200)]);
    bytes.extend(request_bytes(2, "sleep_ms", &[Value::from(50)]));
    bytes.extend(request_bytes(3, "add", &[Value::from(1), Value::from(2)]));
    raw.send(&bytes);
    raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let replies = replies_then_close(&mut raw);
    let want = vec![
        (1, Value::Nil, Value::from(200)),
        (2, Value::Nil, Value::from(50)),
        (3, Value::Nil, Value::from(3)),
    ];
    assert_eq!(replies, want);
    f.only_normal_client_left();
    f.normal_client_works();
}

/// A protocol violation closes the connection, but only after the requests
/// the peer sent before it are answered.
#[test]
fn requests_before_a_protocol_violation_are_answered_before_the_close() {
    let mut f = Fixture::new();
    let mut raw = f.raw();
    let mut bytes = request_bytes(1, "sleep_ms", &[Value::from(100)]);
    bytes.push(0xc1); // never valid MessagePack
    raw.send(&bytes);
    let replies = replies_then_close(&mut raw);
    assert_eq!(replies, vec![(1, Value::Nil, Value::from(100))]);
    f.only_normal_client_left();
    f.normal_client_works();
}

/// The error reply to a bad request goes out through the reactor: a peer
/// that does not read (so the reply cannot be written) must not hold up the
/// I/O thread that serves everyone else (each such write used to hold it
/// for a second).
#[test]
fn a_bad_request_from_a_peer_that_does_not_read_stalls_nobody() {
    use std::os::fd::AsRawFd;
    let mut f = Fixture::new();
    let host_port = f.host_port.clone();
    let senders: Vec<_> = (0..3u8)
        .map(|i| {
            let host_port = host_port.clone();
            std::thread::spawn(move || {
                let mut raw = RawPeer::connect(&host_port);
                let small: libc::c_int = 4096;
                // SAFETY: a live socket; the option value is a c_int.
                let rc = unsafe {
                    libc::setsockopt(
                        raw.stream.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUF,
                        (&small as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                assert_eq!(rc, 0);
                // More replies than the sockets hold (but less than the
                // write backlog limit, so reading goes on), then a request
                // whose method is not a string: it gets an error reply.
                let mut bytes = Vec::new();
                for k in 0..10 {
                    let big = Value::Binary(vec![i; 1024 * 1024]);
                    bytes.extend(request_bytes(k, "echo", &[big]));
                }
                bytes.extend([0x94, 0x00, 0x09, 0x01, 0x90]); // [0, 9, 1, []]
                raw.send(&bytes);
                raw // kept open, never read
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut quiet_since: Option<Instant> = None;
    while quiet_since.map_or(true, |t| t.elapsed() < Duration::from_millis(1500)) {
        let t = Instant::now();
        f.normal_client_works();
        slowest = slowest.max(t.elapsed());
        if quiet_since.is_none() && senders.iter().all(|s| s.is_finished()) {
            quiet_since = Some(Instant::now());
        }
    }
    let hostile: Vec<_> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    assert!(
        slowest < Duration::from_millis(500),
        "a call took {slowest:?}"
    );
    drop(hostile);
    f.only_normal_client_left();
}

#[test]
fn truncated_message_sent_byte_by_byte_then_completed_is_answered() {
    let mut f = Fixture::new();
    let mut raw = f.raw();
    let full = request_bytes(9, "add", &[Value::from(40), Value::from(2)]);
    for b in &full {
        raw.send(&[*b]);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(raw.expect_response(9), (Value::Nil, Value::from(42)));
    f.normal_client_works();
}

#[test]
fn not_an_array_closes_the_connection() {
    let mut f = Fixture::new();
    for bytes in [&[0x01u8][..], &[0xa3, b'a', b'b', b'c'], &[0x90], &[0xc1]] {
        let mut raw = f.raw();
        raw.send(bytes);
        let seen = assert_closed_promptly(&mut raw, "not an array");
        assert!(seen.is_empty(), "{bytes:?} got {seen:?}");
        f.normal_client_works();
    }
    f.only_normal_client_left();
}

#[test]
fn wrong_types_get_an_error_reply_then_close() {
    let mut f = Fixture::new();
    let mut raw = f.raw();
    // [0, 7, "add", 5]: params is not an array.
    raw.send(&[0x94, 0x00, 0x07, 0xa3, b'a', b'd', b'd', 0x05]);
    match raw.expect_msg() {
        Message::Response {
            msgid,
            error,
            result,
        } => {
            assert_eq!(msgid, 7);
            assert!(!error.is_nil(), "the error object must not be nil");
            let items = error.as_array().expect("[code, message]");
            assert_eq!(items[0], Value::from(ERROR_CODE_VALIDATION));
            assert!(items[1].as_str().is_some());
            assert_eq!(result, Value::Nil);
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
    assert_closed_promptly(&mut raw, "wrong types");
    f.normal_client_works();

    // [0, 8, 5, []]: method not a str.
    let mut raw = f.raw();
    raw.send(&[0x94, 0x00, 0x08, 0x05, 0x90]);
    let (error, _) = raw.expect_response(8);
    assert!(!error.is_nil());
    assert_closed_promptly(&mut raw, "method not a str");

    // [0, "x", "add", []]: msgid not an integer, so no reply is possible.
    let mut raw = f.raw();
    raw.send(&[0x94, 0x00, 0xa1, b'x', 0xa3, b'a', b'd', b'd', 0x90]);
    let seen = assert_closed_promptly(&mut raw, "bad msgid");
    assert!(seen.is_empty());

    // [7, 1, 2]: unknown message type.
    let mut raw = f.raw();
    raw.send(&[0x93, 0x07, 0x01, 0x02]);
    assert_closed_promptly(&mut raw, "unknown type");

    f.only_normal_client_left();
    f.normal_client_works();
}

#[test]
fn huge_declared_length_closes_at_once() {
    let mut f = Fixture::new();
    for header in [
        &[0xc6u8, 0xff, 0xff, 0xff, 0xff][..], // bin32 of 4 GiB
        &[0xdb, 0xff, 0xff, 0xff, 0xff],       // str32
        &[0xdd, 0xff, 0xff, 0xff, 0xff],       // array32 of 4G elements
        &[0xdf, 0xff, 0xff, 0xff, 0xff],       // map32
    ] {
        let mut raw = f.raw();
        // [0, 1, "echo", [<header> ...]] with only a few bytes of the body:
        // the server must give up on the header, not wait for (or allocate)
        // the data.
        let mut bytes = vec![0x94, 0x00, 0x01, 0xa4, b'e', b'c', b'h', b'o', 0x91];
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0; 16]);
        raw.send(&bytes);
        assert_closed_promptly(&mut raw, "huge length");
        f.normal_client_works();
    }
    // The same header as a whole message.
    let mut raw = f.raw();
    raw.send(&[0xc6, 0xff, 0xff, 0xff, 0xff]);
    assert_closed_promptly(&mut raw, "huge top-level bin");
    f.only_normal_client_left();
    f.normal_client_works();
}

#[test]
fn deep_nesting_closes_the_connection() {
    let mut f = Fixture::new();
    let mut raw = f.raw();
    // [0, 1, "echo", [[[[...200 levels...]]]]]
    let mut bytes = vec![0x94, 0x00, 0x01, 0xa4, b'e', b'c', b'h', b'o'];
    bytes.extend(std::iter::repeat(0x91).take(200));
    bytes.push(0xc0);
    raw.send(&bytes);
    assert_closed_promptly(&mut raw, "deep nesting");
    f.normal_client_works();

    // Nesting within the default limit is fine.
    let mut deep = Value::Nil;
    for _ in 0..100 {
        deep = Value::Array(vec![deep]);
    }
    assert_eq!(
        f.client
            .call_value("echo", std::slice::from_ref(&deep), CALL)
            .unwrap(),
        deep
    );
    f.only_normal_client_left();
}

#[test]
fn odd_method_names() {
    let mut f = Fixture::new();
    let mut raw = f.raw();

    // Invalid UTF-8 in a str method name: an unknown method, connection open.
    raw.send(&[0x94, 0x00, 0x03, 0xa2, 0xff, 0xfe, 0x90]);
    let (error, result) = raw.expect_response(3);
    assert_eq!(result, Value::Nil);
    let items = error.as_array().expect("[code, message]");
    assert_eq!(items[0], Value::from(ERROR_CODE_VALIDATION));
    assert!(
        items[1].as_str().unwrap().starts_with("unknown method"),
        "{error}"
    );

    // The method name as bin is dispatched like a str.
    raw.send(&[
        0x94, 0x00, 0x04, 0xc4, 0x03, b'a', b'd', b'd', 0x92, 0x01, 0x02,
    ]);
    assert_eq!(raw.expect_response(4), (Value::Nil, Value::from(3)));

    // Unknown method: [1, "unknown method: ..."], connection open.
    raw.send(&request_bytes(5, "nope", &[]));
    let (error, _) = raw.expect_response(5);
    assert_eq!(
        error,
        Value::Array(vec![
            Value::from(ERROR_CODE_VALIDATION),
            Value::from("unknown method: nope")
        ])
    );

    // Notifications nobody registered are accepted and ignored.
    let mut note = Vec::new();
    foorpc::codec::encode_notification(&mut note, "nobody_listens", &[Value::from(1)]);
    raw.send(&note);
    // A response nobody asked for is ignored too.
    let mut stray = Vec::new();
    foorpc::codec::encode_response(&mut stray, 12345, &Value::Nil, &Value::from(1));
    raw.send(&stray);
    raw.expect_open_and_silent(Duration::from_millis(100));

    // Still open and answering, pipelined in one write.
    let mut both = request_bytes(6, "add", &[Value::from(2), Value::from(2)]);
    both.extend(request_bytes(
        7,
        "echo",
        &[rmpv::decode::read_value(&mut &[0xa2u8, 0xc3, 0x28][..]).unwrap()],
    ));
    raw.send(&both);
    assert_eq!(raw.expect_response(6), (Value::Nil, Value::from(4)));
    let (error, result) = raw.expect_response(7);
    assert_eq!(error, Value::Nil);
    // Invalid UTF-8 survives the round trip byte for byte.
    assert_eq!(result.as_str(), None);
    match result {
        Value::String(s) => assert_eq!(s.as_bytes(), &[0xc3, 0x28]),
        other => panic!("{other:?}"),
    }
    f.normal_client_works();
}

/// Several hostile connections at once, interleaved with normal calls.
#[test]
fn garbage_on_many_connections_at_once() {
    let mut f = Fixture::new();
    let mut raws: Vec<_> = (0..8).map(|_| f.raw()).collect();
    for (i, raw) in raws.iter_mut().enumerate() {
        let mut bytes = request_bytes(i as u32, "add", &[Value::from(1), Value::from(1)]);
        bytes.push(0xc1); // then a reserved byte
        raw.stream.write_all(&bytes).unwrap();
    }
    f.normal_client_works();
    for raw in &mut raws {
        assert_closed_promptly(raw, "garbage after a request");
    }
    f.only_normal_client_left();
    f.normal_client_works();
}
