//! Placement per key: twemproxy's ketama lookup (hash + binary search over the continuum) and
//! Redis Cluster's slot computation, in keys per second. Keys are built outside the timed loop.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use keygate::placement::ketama::{Hash, Node, Ring};
use keygate::placement::slots::slot_of;

fn keys() -> Vec<Vec<u8>> {
    (0..1000)
        .map(|i| format!("key:{i:012}").into_bytes())
        .collect()
}

fn ring_lookup(c: &mut Criterion) {
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node {
            name: format!("127.0.0.1:{}", 7000 + i),
            weight: 1,
        })
        .collect();
    let keys = keys();
    let mut group = c.benchmark_group("placement");
    group.throughput(Throughput::Elements(keys.len() as u64));
    for (name, hash) in [
        ("ketama_fnv1a_64", Hash::Fnv1a64),
        ("ketama_md5", Hash::Md5),
    ] {
        let ring = Ring::new(&nodes, hash, Some(*b"{}"));
        group.bench_function(name, |b| {
            b.iter(|| keys.iter().map(|k| ring.server_of(k)).sum::<usize>())
        });
    }
    group.bench_function("cluster_slot", |b| {
        b.iter(|| {
            keys.iter()
                .map(|k| slot_of(black_box(k)) as usize)
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, ring_lookup);
criterion_main!(benches);
