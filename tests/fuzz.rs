//! Fuzzing the parsers that face the outside, on stable Rust: each target
//! mutates its seed corpus (`tests/fuzz/<target>/`: bit flips, byte and
//! chunk insertions, deletions, repeats, splices of two seeds, truncations)
//! for a bounded time and checks what must hold for any input: no panic, and
//! the parser's own promise (a refusal is an error, a changed token is never
//! accepted, the API answers a 4xx rather than failing). Each run starts from
//! a fixed seed, so a failure is repeatable; `WEIR_FUZZ_SECONDS` (default 2)
//! sets the time per target, `WEIR_FUZZ_SEED` the seed. An input that ever
//! broke a target is kept in its corpus as a regression case.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use weir_tests::{TestHost, root};

/// A small, fast, deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// Bytes that parsers treat specially, for insertions.
const INTERESTING: [&[u8]; 14] = [
    b"\x00",
    b"\xff",
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b"%",
    b"..",
    b"/",
    b"\xbf",
    b"\x9f\xff\xff\xff\xff",
    b"99999999999999999999999999999999999999999999",
];

/// One mutation of `input` (or a splice with `other`).
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(8) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            2 => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 => {
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(at..at, piece.iter().copied());
            }
            4 if !out.is_empty() => {
                // A chunk repeated: deep nesting, long names.
                let start = rng.below(out.len());
                let end = (start + 1 + rng.below(32)).min(out.len());
                let chunk = out[start..end].to_vec();
                for _ in 0..=rng.below(64) {
                    out.splice(at..at, chunk.iter().copied());
                }
            }
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            6 => out.truncate(at),
            _ => out.insert(at, rng.next() as u8),
        }
    }
    out
}

/// The seeds of a target, from `tests/fuzz/<target>/`.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = root().join("tests/fuzz").join(target);
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("the corpus folder").map(|e| e.expect("entry").path()).collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).expect("seed")).collect();
    assert!(!seeds.is_empty(), "{} has no seeds", dir.display());
    seeds
}

fn budget() -> Duration {
    let seconds = std::env::var("WEIR_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    Duration::from_secs_f64(seconds)
}

/// Runs `check` on every seed, then on mutations until the time is up; a
/// panic names the input (as a byte string) so it can join the corpus.
fn fuzz(target: &str, mut check: impl FnMut(&[u8])) -> usize {
    let seeds = corpus(target);
    let seed = std::env::var("WEIR_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED_u64);
    let mut rng = Rng(seed | 1);
    let run = |check: &mut dyn FnMut(&[u8]), input: &[u8]| {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(input)));
        if let Err(panic) = outcome {
            let message =
                panic.downcast_ref::<String>().cloned().or(panic.downcast_ref::<&str>().map(|s| (*s).to_owned()));
            panic!("{target} broke on {:?}: {}", String::from_utf8_lossy(input), message.unwrap_or_default());
        }
    };
    for s in &seeds {
        run(&mut check, s);
    }
    let (deadline, mut runs) = (Instant::now() + budget(), seeds.len());
    while Instant::now() < deadline {
        let input = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())];
        run(&mut check, &mutate(&mut rng, input, other));
        runs += 1;
    }
    println!("{target}: {runs} inputs");
    runs
}

#[test]
fn cbor_bodies_become_json_or_a_clear_refusal() {
    fuzz("cbor", |input| {
        if let Ok(json) = weir_host::api::cbor::to_json(input) {
            let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&json);
            assert!(json.is_empty() || parsed.is_ok(), "not JSON: {}", String::from_utf8_lossy(&json));
        }
    });
}

#[test]
fn kpl_aggregates_are_taken_apart_or_set_aside() {
    fuzz("kpl", |input| {
        let record = weir_host::stream::StoredRecord {
            shard: 0,
            sequence: 0,
            key: "k".into(),
            event_time_ms: 0,
            arrival_ms: 0,
            data: bytes::Bytes::copy_from_slice(input),
            source: None,
            attributes: Vec::new(),
        };
        let _ = weir_host::stream::kpl::contents(&record);
    });
}

#[test]
fn sigv4_headers_never_pass_when_changed() {
    use axum::http::{HeaderMap, HeaderValue, Method, Uri};
    let key = weir_host::sigv4::AccessKey { id: "AKIAFUZZ".into(), secret: "fuzz-secret".into() };
    let signer = weir_host::sigv4::Signer { key: &key, region: "us-east-1", service: "kinesis" };
    let uri: Uri = "http://127.0.0.1:7070/".parse().expect("uri");
    let now = SystemTime::now();
    let body = br#"{"StreamName":"s"}"#;
    let mut signed = HeaderMap::new();
    signed.insert("x-amz-target", HeaderValue::from_static("Kinesis_20131202.ListStreams"));
    signer.sign(&Method::POST, &uri, &mut signed, body, now);
    let genuine = signed.get("authorization").expect("signed").as_bytes().to_vec();
    let keys = std::slice::from_ref(&key);
    assert!(weir_host::sigv4::verify(keys, &Method::POST, &uri, &signed, body, now).is_ok());
    fuzz("sigv4", |input| {
        let mut headers = signed.clone();
        // The seed is the genuine header's shape; the fuzzed value replaces it.
        let value = if input == b"GENUINE" { genuine.clone() } else { input.to_vec() };
        let Ok(value) = HeaderValue::from_bytes(&value) else { return };
        headers.insert("authorization", value.clone());
        let verdict = weir_host::sigv4::verify(keys, &Method::POST, &uri, &headers, body, now);
        assert!(verdict.is_err() || value.as_bytes() == genuine, "a changed header passed: {value:?}");
    });
}

#[test]
fn recipient_tokens_are_never_accepted_when_changed() {
    let tokens = weir_host::access::RecipientTokens::new([9; 32]);
    let now = SystemTime::now();
    let (genuine, _) = tokens.mint("app/C000123", Duration::from_secs(600), now);
    assert!(tokens.caller(&genuine, now).is_some());
    fuzz("tokens", |input| {
        let token = if input == b"GENUINE" { genuine.clone() } else { String::from_utf8_lossy(input).into_owned() };
        let accepted = tokens.caller(&token, now).is_some();
        assert!(!accepted || token == genuine, "a changed token was accepted: {token}");
    });
}

#[test]
fn manifests_load_or_report_their_problems() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pipeline.toml");
    fuzz("manifest", |input| {
        std::fs::write(&path, input).expect("write");
        if let Err(diagnostics) = weir_host::manifest::load(&path) {
            assert!(!diagnostics.to_string().is_empty(), "a refusal says why");
        }
    });
}

#[test]
fn agent_configs_load_or_say_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    fuzz("agent", |input| {
        std::fs::write(&path, input).expect("write");
        if let Err(e) = weir_host::agent::AgentConfig::load(&path) {
            assert!(!e.to_string().is_empty(), "a refusal says why");
        }
    });
}

/// Kinesis and Firehose requests (JSON and CBOR bodies, iterators included)
/// through the running API: whatever comes in, the answer is a 2xx or 4xx,
/// never a failure of weir's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_requests_get_an_answer_never_a_failure() {
    let manifest = "[pipeline]\nname = \"fuzz\"\ndata-dir = \"data\"\n\n[streams.s]\nshards = 2\n";
    let mut host = TestHost::start(manifest).await.expect("start");
    let client = reqwest::Client::new();
    let url = format!("{}/", host.url);
    // A genuine iterator for the seeds that read (`ITERATOR` in a seed is replaced by it).
    let answer: serde_json::Value = client
        .post(&url)
        .header("x-amz-target", "Kinesis_20131202.GetShardIterator")
        .header("content-type", "application/x-amz-json-1.1")
        .body(r#"{"StreamName":"s","ShardId":"shardId-000000000000","ShardIteratorType":"TRIM_HORIZON"}"#)
        .send()
        .await
        .expect("iterator")
        .json()
        .await
        .expect("json");
    let iterator = answer["ShardIterator"].as_str().expect("an iterator").to_owned();
    let handle = tokio::runtime::Handle::current();
    let send = |input: &[u8]| {
        // A seed is `<X-Amz-Target> <content type>\n<body>`.
        let text = String::from_utf8_lossy(input).replace("ITERATOR", &iterator).into_bytes();
        let (head, body) = match text.iter().position(|&b| b == b'\n') {
            Some(at) => (String::from_utf8_lossy(&text[..at]).into_owned(), text[at + 1..].to_vec()),
            None => (String::new(), text.clone()),
        };
        let mut words = head.split(' ');
        let (target, content_type) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let body = if content_type.contains("cbor") { cbor_of(&body) } else { body };
        let mut request = client.post(&url).body(body);
        for (name, value) in [("x-amz-target", target), ("content-type", content_type)] {
            if let Ok(value) = reqwest::header::HeaderValue::from_str(value) {
                request = request.header(name, value);
            }
        }
        let status = handle.block_on(request.send()).expect("an answer").status();
        assert!(!status.is_server_error(), "answered {status}");
    };
    // The fuzz loop is synchronous: each request waits for its answer in place.
    tokio::task::block_in_place(|| fuzz("aws", send));
    host.stop().await;
}

/// A CBOR seed is kept as JSON text (readable in the corpus) and sent as CBOR;
/// a mutation that is no longer JSON is sent as the bytes it is.
fn cbor_of(body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => weir_host::api::cbor::from_json(&value.to_string()),
        Err(_) => body.to_vec(),
    }
}
