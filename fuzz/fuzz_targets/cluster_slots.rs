//! What a cluster node sends keygate that it reads rather than forwards: `CLUSTER SLOTS` replies
//! (the value parser, then the slot-map parser), array replies split for merging, and MOVED/ASK
//! redirections. No panic; any slot map accepted has only valid ranges.
#![no_main]

use bytes::Bytes;
use keygate::resp::value;
use keygate::placement::slots::{parse_cluster_slots, parse_redirect, SLOTS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    let _ = value::elements(&frame);
    let _ = parse_redirect(data);
    if let Some(v) = value::parse(&frame) {
        if let Ok(shards) = parse_cluster_slots(&v, "127.0.0.1") {
            for shard in shards {
                for (start, end) in shard.ranges {
                    assert!(start <= end && (end as usize) < SLOTS);
                }
            }
        }
    }
});
