//! The tenant rewriter on arbitrary commands: split the input on NUL bytes into arguments, let
//! the first name a command, rewrite it for a tenant, and check the property isolation rests on:
//! every key position Redis would read (by the table's positions or keygate's own key finder)
//! holds a key that starts with the tenant's prefix. No panic either way.
#![no_main]

use bytes::Bytes;
use keygate::command::{keys, Command, COMMANDS};
use keygate::tenant::custom;
use keygate::tenant::rewrite;
use keygate::tenant::rules::{rule_at, Rule};
use libfuzzer_sys::fuzz_target;

const PREFIX: &[u8] = b"t1:";

fuzz_target!(|data: &[u8]| {
    let args: Vec<Bytes> = data
        .split(|&b| b == 0)
        .map(Bytes::copy_from_slice)
        .collect();
    if args.is_empty() || args.len() > 64 {
        return;
    }
    // Use a real command name half of the time, so the search reaches the rewriters; now and
    // then its full `container|sub` table name, which Redis (and keygate) must treat as unknown.
    let mut args = args;
    if let Some(first) = args[0].first() {
        if first % 2 == 0 {
            let spec = &COMMANDS[*first as usize % COMMANDS.len()];
            let name = if first % 8 == 0 {
                spec.name
            } else {
                spec.name.split('|').next().unwrap()
            };
            args[0] = Bytes::copy_from_slice(name.as_bytes());
        }
    }
    let named_with_bar = args[0].contains(&b'|');
    let mut cmd = Command::parse(args);
    assert!(
        !named_with_bar || cmd.spec.is_none(),
        "a container|sub name sent as the command must be unknown: {:?}",
        cmd.args[0]
    );
    let Some(spec) = cmd.spec else { return };
    if !spec.arity_ok(cmd.args.len()) {
        return;
    }
    let rewritten = match rule_at(cmd.spec_index) {
        Some(Rule::Keys) => {
            rewrite::prefix_keys(spec, &mut cmd.args, PREFIX);
            true
        }
        Some(Rule::Custom) => {
            custom::rewrite(spec.name, &mut cmd.args, PREFIX, true, |_| true).is_ok()
        }
        _ => false,
    };
    if rewritten && spec.name != "script|load" && spec.name != "script|exists" {
        for at in keys::positions(spec, &cmd.args) {
            assert!(
                cmd.args[at].starts_with(PREFIX),
                "{}: key at {at} not prefixed: {:?}",
                spec.name,
                cmd.args
            );
        }
    }
    let _ = rewrite::confine_pattern(PREFIX, cmd.args.get(1).map(|a| &a[..]));
});
