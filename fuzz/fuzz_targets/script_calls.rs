//! A Lua script body a client sends (EVAL), read by keygate for the commands it calls (CLIENT
//! TRACKING). No panic; a body keygate cannot read is `None`, never a guess.
#![no_main]

use keygate::command::script::calls;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = calls(data);
});
