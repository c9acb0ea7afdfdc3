//! keygate's hand-written request decoder and reply scanner against the `redis-protocol` crate
//! (the design's starting point) on the same inputs: bytes per second, and allocations per
//! request counted by a counting allocator (printed once per input before it is timed).
//!
//! The two do the same job in each pair: requests become a `Vec<Bytes>` of arguments (what
//! routing needs) from a `BytesMut` read buffer; replies are delimited (their bytes are forwarded
//! untouched), with redis-protocol's zero-copy `decode_range`, which also only finds the frame's
//! extent. Run: `cargo bench --bench codec_choice`. The figures are in `resp`'s module doc.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use keygate::resp::reply::Scanner;
use keygate::resp::request::{Decoder, Limits};
use redis_protocol::resp2::{decode as rp, types::BytesFrame};

/// Counts allocations, to report allocations per request.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Request inputs: (name, bytes, requests in it).
fn requests() -> Vec<(&'static str, Vec<u8>, usize)> {
    let small: Vec<u8> = (0..100)
        .flat_map(|i| {
            let key = format!("key:{i:012}");
            command(&[b"SET", key.as_bytes(), &[b'x'; 32]])
        })
        .collect();
    let big: Vec<u8> = (0..4)
        .flat_map(|i| {
            command(&[
                b"SET",
                format!("big:{i}").as_bytes(),
                &vec![b'v'; 512 * 1024],
            ])
        })
        .collect();
    let keys: Vec<String> = (0..1000).map(|i| format!("key:{i:012}")).collect();
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(keys.iter().map(|k| k.as_bytes()));
    let wide = command(&mget).repeat(10);
    vec![
        ("set_32B_x100", small, 100),
        ("set_512KiB_x4", big, 4),
        ("mget_1000_keys_x10", wide, 10),
    ]
}

/// keygate: the resumable decoder, arguments as `Bytes` sharing the read buffer.
fn keygate_requests(input: &[u8]) -> usize {
    let mut buf = BytesMut::from(input);
    let mut decoder = Decoder::new(Limits::default());
    let mut n = 0;
    while let Some(args) = decoder.decode(&mut buf).unwrap() {
        n += black_box(args).len();
    }
    n
}

/// redis-protocol: `decode_bytes_mut` splits a frame off the buffer; its bulk strings become
/// the arguments.
fn crate_requests(input: &[u8]) -> usize {
    let mut buf = BytesMut::from(input);
    let mut n = 0;
    while let Some((frame, _, _)) = rp::decode_bytes_mut(&mut buf).unwrap() {
        let BytesFrame::Array(items) = frame else {
            panic!("not an array")
        };
        let args: Vec<Bytes> = items
            .into_iter()
            .map(|f| match f {
                BytesFrame::BulkString(b) => b,
                _ => panic!("not a bulk string"),
            })
            .collect();
        n += black_box(args).len();
    }
    n
}

/// Reply inputs: (name, bytes, replies in it).
fn replies() -> Vec<(&'static str, Vec<u8>, usize)> {
    let bulk32 = format!("$32\r\n{}\r\n", "v".repeat(32))
        .repeat(100)
        .into_bytes();
    let big = format!("$1048576\r\n{}\r\n", "v".repeat(1 << 20)).into_bytes();
    let mut mget = b"*1000\r\n".to_vec();
    for _ in 0..1000 {
        mget.extend_from_slice(format!("$32\r\n{}\r\n", "v".repeat(32)).as_bytes());
    }
    // A Lua script's nested table: 100 levels deep, an integer at the bottom.
    let mut deep = b"*1\r\n".repeat(100);
    deep.extend_from_slice(b":1\r\n");
    let deep = deep.repeat(10);
    vec![
        ("bulk_32B_x100", bulk32, 100),
        ("bulk_1MiB_x1", big, 1),
        ("array_1000_bulks_x1", mget, 1),
        ("array_100_deep_x10", deep, 10),
    ]
}

fn keygate_replies(input: &[u8]) -> usize {
    let mut scanner = Scanner::new(512);
    let mut at = 0;
    while let Some(frame) = scanner.scan(&input[at..]).unwrap() {
        at += frame.len;
    }
    at
}

fn crate_replies(input: &[u8]) -> usize {
    let mut at = 0;
    while let Some((frame, len)) = rp::decode_range(&input[at..]).unwrap() {
        black_box(frame);
        at += len;
    }
    at
}

/// Allocations one run of `f` makes, per request or reply.
fn allocations_per(f: fn(&[u8]) -> usize, input: &[u8], count: usize) -> f64 {
    let before = ALLOCATIONS.load(Relaxed);
    black_box(f(input));
    (ALLOCATIONS.load(Relaxed) - before) as f64 / count as f64
}

fn compare(
    c: &mut Criterion,
    group: &str,
    inputs: Vec<(&'static str, Vec<u8>, usize)>,
    keygate: fn(&[u8]) -> usize,
    krate: fn(&[u8]) -> usize,
) {
    let mut g = c.benchmark_group(group);
    for (name, input, count) in inputs {
        assert_eq!(keygate(&input) > 0, krate(&input) > 0);
        println!(
            "{group}/{name}: allocations per item: keygate {:.2}, redis-protocol {:.2}",
            allocations_per(keygate, &input, count),
            allocations_per(krate, &input, count)
        );
        g.throughput(Throughput::Bytes(input.len() as u64));
        for (who, f) in [("keygate", keygate), ("redis-protocol", krate)] {
            g.bench_function(format!("{name}/{who}"), |b| {
                b.iter_batched(|| &input[..], f, BatchSize::SmallInput)
            });
        }
    }
    g.finish();
}

fn requests_bench(c: &mut Criterion) {
    compare(c, "request", requests(), keygate_requests, crate_requests);
}

fn replies_bench(c: &mut Criterion) {
    compare(c, "reply", replies(), keygate_replies, crate_replies);
}

criterion_group!(benches, requests_bench, replies_bench);
criterion_main!(benches);
