//! Hot pure functions of the request path: decoding client requests and delimiting backend
//! replies, in bytes per second. Inputs are built outside the timed loops.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use keygate::command::Command;
use keygate::resp::reply::Scanner;
use keygate::resp::request::{Decoder, Limits};

/// A pipeline of `n` SET commands with `value_len`-byte values, as redis-benchmark sends them.
fn set_pipeline(n: usize, value_len: usize) -> Vec<u8> {
    let value = "x".repeat(value_len);
    let mut out = Vec::new();
    for i in 0..n {
        let key = format!("key:{i:012}");
        out.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            )
            .as_bytes(),
        );
    }
    out
}

fn request_decoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_decode");
    for (name, input) in [
        ("set_32B_x100", set_pipeline(100, 32)),
        ("set_1KiB_x100", set_pipeline(100, 1024)),
        ("inline_get_x100", b"GET key:000000000001\r\n".repeat(100)),
    ] {
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| {
            b.iter_batched(
                || BytesMut::from(&input[..]),
                |mut buf| {
                    let mut decoder = Decoder::new(Limits::default());
                    while let Some(args) = decoder.decode(&mut buf).unwrap() {
                        black_box(Command::parse(args));
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn reply_scanning(c: &mut Criterion) {
    let mut group = c.benchmark_group("reply_scan");
    let bulk32 = format!("$32\r\n{}\r\n", "v".repeat(32))
        .repeat(100)
        .into_bytes();
    let mut mget = b"*10\r\n".to_vec();
    for _ in 0..10 {
        mget.extend_from_slice(format!("$32\r\n{}\r\n", "v".repeat(32)).as_bytes());
    }
    let mget = mget.repeat(10);
    let ok = b"+OK\r\n".repeat(100);
    for (name, input) in [
        ("bulk_32B_x100", bulk32),
        ("mget10_x10", mget),
        ("ok_x100", ok),
    ] {
        group.throughput(Throughput::Bytes(input.len() as u64));
        let input = Bytes::from(input);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut scanner = Scanner::new(512);
                let mut at = 0;
                while let Some(frame) = scanner.scan(&input[at..]).unwrap() {
                    at += frame.len;
                }
                black_box(at)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, request_decoding, reply_scanning);
criterion_main!(benches);
