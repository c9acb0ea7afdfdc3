//! The backend reply scanner on arbitrary bytes: no panic, and the same frames whether the bytes
//! arrive at once or one piece after another.
#![no_main]

use keygate::resp::reply::Scanner;
use libfuzzer_sys::fuzz_target;

/// Frame lengths found, and whether scanning stopped on an error.
fn scan(data: &[u8], step: usize) -> (Vec<usize>, bool) {
    let mut scanner = Scanner::new(64);
    let mut frames = Vec::new();
    let mut start = 0;
    let mut end = 0;
    while end < data.len() {
        end = (end + step).min(data.len());
        loop {
            match scanner.scan(&data[start..end]) {
                Ok(Some(frame)) => {
                    assert!(frame.len > 0 && start + frame.len <= end);
                    frames.push(frame.len);
                    start += frame.len;
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let step = 1 + data[0] as usize % 17;
    let data = &data[1..];
    let whole = scan(data, data.len().max(1));
    let pieces = scan(data, step);
    // An error may be seen earlier when bytes arrive piecemeal only if the frames before agree.
    assert_eq!(whole.0, pieces.0);
    assert_eq!(whole.1, pieces.1);
});
