//! Backend replies: a scanner that finds where each reply ends, so its bytes can be forwarded
//! untouched (zero-copy) to the client that asked for it.
//!
//! It never recurses: nesting is tracked in a heap stack of "elements still to come" counts, so
//! a reply nested a million levels deep costs memory proportional to its size and no stack. Replies
//! deeper than `max_depth` are still delimited exactly (the connection stays in step) and flagged,
//! so the caller can answer with an error instead of handing a client library something it would
//! overflow its own stack on. Like the request decoder it is resumable: a reply arriving in small
//! pieces is scanned once, not once per piece.
//!
//! RESP3 types are recognised too, so nothing here needs to change when backends speak RESP3.

use memchr::memchr;

use super::parse_int;

/// The backend broke the protocol: the connection can no longer be trusted to be in step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyError(pub &'static str);

/// One complete reply at the front of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Its length in bytes.
    pub len: usize,
    /// It is an error reply (`-` or `!`).
    pub is_error: bool,
    /// It nests deeper than the scanner's `max_depth`.
    pub too_deep: bool,
}

/// Resumable reply scanner for one backend connection.
#[derive(Debug)]
pub struct Scanner {
    max_depth: usize,
    /// Offset of the next element header, relative to the start of the current reply.
    pos: usize,
    /// For each open aggregate, how many elements it still needs.
    open: Vec<u64>,
    /// Bytes the buffer must hold before scanning can make progress (a bulk payload's end).
    need: usize,
    /// How far past `pos` the current line was already searched for its `\r`.
    searched: usize,
    too_deep: bool,
}

impl Scanner {
    pub fn new(max_depth: usize) -> Self {
        Scanner {
            max_depth,
            pos: 0,
            open: Vec::new(),
            need: 0,
            searched: 0,
            too_deep: false,
        }
    }

    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// How many more bytes than `have` the scanner needs before it can progress, when it knows
    /// (inside a bulk payload): a hint for sizing the read buffer.
    pub fn missing(&self, have: usize) -> usize {
        self.need.saturating_sub(have)
    }

    /// Find the end of the reply that starts at `buf[0]`. `Ok(None)`: incomplete, call again
    /// with more bytes (the same buffer, grown); progress is remembered. After `Ok(Some(frame))`
    /// the caller removes `frame.len` bytes from the front and the scanner starts afresh.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<Frame>, ReplyError> {
        if buf.len() < self.need {
            return Ok(None);
        }
        loop {
            let start = self.pos;
            let from = start + self.searched;
            let Some(cr) = buf.get(from..).and_then(|rest| memchr(b'\r', rest)) else {
                self.searched = buf.len().saturating_sub(start);
                return Ok(None);
            };
            let cr = from + cr;
            if cr + 1 >= buf.len() {
                self.searched = cr - start;
                return Ok(None);
            }
            if buf[cr + 1] != b'\n' {
                return Err(ReplyError("line not ended by CRLF"));
            }
            if cr == start {
                return Err(ReplyError("empty line where a reply was expected"));
            }
            self.searched = 0;
            let kind = buf[start];
            let header = &buf[start + 1..cr];
            let after = cr + 2;
            let mut children: u64 = 0;
            match kind {
                b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {
                    if kind == b':' && parse_int(header).is_none() {
                        return Err(ReplyError("bad integer"));
                    }
                    self.pos = after;
                }
                b'$' | b'!' | b'=' => {
                    let len = match parse_int(header) {
                        Some(-1) if kind == b'$' => None,
                        Some(n) if n >= 0 => Some(n as usize),
                        _ => return Err(ReplyError("bad bulk length")),
                    };
                    match len {
                        None => self.pos = after,
                        Some(len) => {
                            let end = after
                                .checked_add(len)
                                .and_then(|e| e.checked_add(2))
                                .ok_or(ReplyError("bad bulk length"))?;
                            if buf.len() < end {
                                // Wait for the whole payload; remember where it ends.
                                self.need = end;
                                return Ok(None);
                            }
                            if &buf[end - 2..end] != b"\r\n" {
                                return Err(ReplyError("bulk payload not ended by CRLF"));
                            }
                            self.need = 0;
                            self.pos = end;
                        }
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = match parse_int(header) {
                        Some(-1) if kind == b'*' => 0,
                        Some(n) if n >= 0 => n as u64,
                        _ => return Err(ReplyError("bad aggregate length")),
                    };
                    // A map holds n pairs; an attribute holds n pairs and is followed by the
                    // reply it annotates, which it is treated as enclosing.
                    children = match kind {
                        b'%' => n.saturating_mul(2),
                        b'|' => n.saturating_mul(2).saturating_add(1),
                        _ => n,
                    };
                    self.pos = after;
                }
                _ => return Err(ReplyError("unknown reply type")),
            }
            if children > 0 {
                self.open.push(children);
                if self.open.len() > self.max_depth {
                    self.too_deep = true;
                }
                continue;
            }
            // One element finished: close every aggregate it completes.
            loop {
                match self.open.last_mut() {
                    None => {
                        let frame = Frame {
                            len: self.pos,
                            is_error: matches!(buf[0], b'-' | b'!'),
                            too_deep: self.too_deep,
                        };
                        *self = Scanner::new(self.max_depth);
                        return Ok(Some(frame));
                    }
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Result<Vec<Frame>, ReplyError> {
        let mut s = Scanner::new(64);
        let mut at = 0;
        let mut out = Vec::new();
        while let Some(f) = s.scan(&input[at..])? {
            at += f.len;
            out.push(f);
        }
        assert_eq!(at, input.len(), "trailing bytes");
        Ok(out)
    }

    #[test]
    fn delimits_every_type() {
        let input: &[u8] = b"+OK\r\n-ERR x\r\n:12\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n*0\r\n\
            *2\r\n$1\r\na\r\n*1\r\n:1\r\n%1\r\n+k\r\n+v\r\n~2\r\n#t\r\n,1.5\r\n_\r\n\
            (123\r\n!3\r\nerr\r\n=7\r\ntxt:abc\r\n>2\r\n+a\r\n+b\r\n|1\r\n+k\r\n+v\r\n:5\r\n";
        let got = frames(input).unwrap();
        assert_eq!(got.len(), 16);
        assert!(got[1].is_error);
        assert!(got[12].is_error);
        assert_eq!(got[7].len, b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n".len());
    }

    #[test]
    fn resumes_byte_by_byte() {
        let input: &[u8] = b"*3\r\n$5\r\nhello\r\n*2\r\n:1\r\n+x\r\n$0\r\n\r\n+next\r\n";
        let mut s = Scanner::new(64);
        let mut found = Vec::new();
        let mut start = 0;
        for end in 1..=input.len() {
            if let Some(f) = s.scan(&input[start..end]).unwrap() {
                found.push(f.len);
                start += f.len;
            }
        }
        assert_eq!(found, vec![input.len() - 7, 7]);
    }

    #[test]
    fn deep_nesting_is_delimited_and_flagged_without_recursion() {
        let depth = 1_000_000;
        let mut input = b"*1\r\n".repeat(depth);
        input.extend_from_slice(b":1\r\n+after\r\n");
        let got = frames(&input).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got[0].too_deep);
        assert!(!got[1].too_deep);
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bad in [
            &b"?x\r\n"[..],
            b"$-2\r\n",
            b"$3\r\nabcd\r\n",
            b":x\r\n",
            b"*-2\r\n",
            b"+OK\rX",
            b"$99999999999999999999\r\n",
            // Found by fuzzing (reply_scan): an empty line inside an aggregate.
            b"*2\r\n\r\n%0\r\n",
            b"\r\n",
        ] {
            let mut s = Scanner::new(64);
            assert!(s.scan(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
