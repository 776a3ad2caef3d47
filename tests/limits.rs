//! The limits an operator sets on the API's listener: a client that does not
//! finish its request headers (or sends nothing) is cut off after `header-read-timeout`, and no
//! more than `max-connections` connections are served at once (the next waits
//! until one closes).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use weir_tests::TestHost;

fn address(host: &TestHost) -> String {
    host.url.trim_start_matches("http://").to_owned()
}

/// Sends `GET /v1/health` on `stream` and waits (up to `wait`) for the answer's status line.
fn health(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    stream.write_all(b"GET /v1/health HTTP/1.1\r\nHost: weir\r\n\r\n").ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    let mut answer = [0u8; 64];
    let n = stream.read(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer[..n]).into_owned();
    text.lines().next().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_finish_its_headers_is_cut_off() {
    let manifest = "[pipeline]\nname = \"slow\"\ndata-dir = \"data\"\n\n[api]\nheader-read-timeout = \"300ms\"\n";
    let mut host = TestHost::start(manifest).await.expect("start");
    let addr = address(&host);
    let silent_addr = addr.clone();
    let silent = tokio::task::spawn_blocking(move || {
        // One that connects and sends nothing at all is cut off too.
        let mut silent = TcpStream::connect(&silent_addr).expect("connect");
        silent.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let started = Instant::now();
        let ended = silent.read_to_end(&mut Vec::new()).is_ok();
        (ended, started.elapsed())
    });
    let closed = tokio::task::spawn_blocking(move || {
        let mut slow = TcpStream::connect(&addr).expect("connect");
        slow.write_all(b"GET /v1/health HTTP/1.1\r\nHost: weir\r\n").expect("half the headers");
        slow.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let started = Instant::now();
        let mut rest = Vec::new();
        // The server ends the connection (with or without a 408): the read sees its end.
        let ended = slow.read_to_end(&mut rest).is_ok();
        (ended, started.elapsed(), String::from_utf8_lossy(&rest).into_owned())
    })
    .await
    .expect("client");
    let (silent_ended, silent_after) = silent.await.expect("silent client");
    host.stop().await;
    assert!(silent_ended && silent_after < Duration::from_secs(5), "a silent client stayed for {silent_after:?}");
    let (ended, after, answer) = closed;
    assert!(ended && after < Duration::from_secs(5), "cut off after {after:?}: {answer}");
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_connections_than_max_connections_are_served_at_once() {
    let manifest = "[pipeline]\nname = \"busy\"\ndata-dir = \"data\"\n\n[api]\nmax-connections = 2\n";
    let mut host = TestHost::start(manifest).await.expect("start");
    let addr = address(&host);
    let outcome = tokio::task::spawn_blocking(move || {
        let mut first = TcpStream::connect(&addr).expect("connect");
        let mut second = TcpStream::connect(&addr).expect("connect");
        // Both are served (and stay open: HTTP/1.1 keeps them alive).
        let served = [health(&mut first, Duration::from_secs(10)), health(&mut second, Duration::from_secs(10))];
        let mut third = TcpStream::connect(&addr).expect("the kernel's backlog takes it");
        let while_full = health(&mut third, Duration::from_millis(500));
        drop(first);
        // Its request was sent already: once a connection closes, it is answered.
        third.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut answer = [0u8; 64];
        let n = third.read(&mut answer).unwrap_or(0);
        (served, while_full, String::from_utf8_lossy(&answer[..n]).into_owned())
    })
    .await
    .expect("clients");
    host.stop().await;
    let (served, while_full, after) = outcome;
    assert!(served.iter().all(|s| s.as_deref() == Some("HTTP/1.1 200 OK")), "{served:?}");
    assert_eq!(while_full, None, "a third connection was served while two were open");
    assert!(after.starts_with("HTTP/1.1 200 OK"), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_does_not_wait_for_connections_that_are_idle_or_sent_nothing() {
    let manifest = "[pipeline]\nname = \"idle\"\ndata-dir = \"data\"\n";
    let mut host = TestHost::start(manifest).await.expect("start");
    let addr = address(&host);
    let clients = tokio::task::spawn_blocking(move || {
        // One that connected and sent nothing yet (accepted before the next one
        // is answered: connections are accepted in turn), one kept alive after an answer.
        let silent = TcpStream::connect(&addr).expect("connect");
        let mut kept = TcpStream::connect(&addr).expect("connect");
        let answered = health(&mut kept, Duration::from_secs(10));
        (answered, kept, silent)
    })
    .await
    .expect("clients");
    let (answered, _kept, _silent) = clients;
    assert_eq!(answered.as_deref(), Some("HTTP/1.1 200 OK"));
    let started = Instant::now();
    host.stop().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "stopping waited {took:?} for idle connections");
}
