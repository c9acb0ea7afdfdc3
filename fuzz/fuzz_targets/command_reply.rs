//! What a server answers to `COMMAND`, which keygate reads to learn the commands its built-in
//! table lacks: the value parser, the reply reader, the table, and the key positions a learned
//! command's specifications give for requests made of the input. No panic; every position
//! found is an argument of the request.
#![no_main]

use bytes::Bytes;
use keygate::command::learned::{key_positions, parse_command_reply, Table};
use keygate::resp::value;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    let Some(reply) = value::parse(&frame) else {
        return;
    };
    let facts = parse_command_reply(&reply);
    let table = Table::build(vec![facts], None);
    // Requests: the input's bytes split on spaces, under every learned name.
    let words: Vec<Bytes> = data
        .split(|&b| b == b' ')
        .take(64)
        .map(Bytes::copy_from_slice)
        .collect();
    for name in table.names() {
        let spec = table.get(name.as_bytes()).expect("a learned name");
        let mut args = vec![Bytes::from(name)];
        args.extend(words.iter().cloned());
        if let Some(positions) = key_positions(spec, &args) {
            assert!(positions.iter().all(|&p| p >= 1 && p < args.len()));
        }
    }
});
