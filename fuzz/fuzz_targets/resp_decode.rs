//! The client request decoder on arbitrary bytes. Besides not panicking, it must give the same
//! requests (or the same error) whether the bytes arrive at once or split at an arbitrary point,
//! and every request it yields must survive re-encoding unchanged.
#![no_main]

use bytes::BytesMut;
use keygate::resp::request::{Decoder, Limits};
use libfuzzer_sys::fuzz_target;

type Outcome = (Vec<Vec<bytes::Bytes>>, Option<String>);

fn decode(pieces: &[&[u8]]) -> Outcome {
    let limits = Limits {
        max_bulk: 1 << 20,
        max_args: 1 << 12,
    };
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(args)) => {
                    assert!(!args.is_empty());
                    requests.push(args);
                }
                Ok(None) => break,
                Err(e) => return (requests, Some(e.0)),
            }
        }
    }
    (requests, None)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize % data.len();
    let data = &data[1..];
    let split = split.min(data.len());
    let whole = decode(&[data]);
    let pieces = decode(&[&data[..split], &data[split..]]);
    assert_eq!(whole, pieces);
    // Re-encoded requests decode to themselves.
    for args in &whole.0 {
        let mut out = BytesMut::new();
        keygate::resp::encode_request(args, &mut out);
        let again = decode(&[&out]);
        assert_eq!(again.0, vec![args.clone()]);
        assert!(again.1.is_none());
    }
});
