//! Client requests: an incremental decoder for RESP multibulk and inline commands.
//!
//! It accepts what Redis 7 accepts and answers malformed input with the protocol error text Redis
//! sends, with these deliberate differences, each closing a request-smuggling gap between what
//! keygate and the server would see: line ends in a multibulk must be `\r\n` (Redis skips any byte
//! after the `\r`), and every bulk payload must be followed by `\r\n` (Redis skips two bytes
//! unseen). Since keygate re-encodes the parsed arguments, the server never sees the client's
//! framing anyway.
//!
//! Cost is linear in bytes received: the decoder keeps its place inside a request (arguments
//! already split off, how far a line was already searched), so a request arriving one byte at a
//! time is never rescanned from its start. Limits are checked on the declared lengths *before*
//! anything is allocated for them, and the argument vector grows with the arguments actually
//! received, never to a count the client merely announced.

use bytes::{Bytes, BytesMut};
use memchr::{memchr, memchr2};

use super::parse_int;

/// Redis's PROTO_INLINE_MAX_SIZE: the longest inline command, and the longest `*N` or `$N` line.
pub const MAX_INLINE: usize = 64 * 1024;

/// Hard limits on one request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest bulk argument (Redis: proto-max-bulk-len, 512 MiB by default).
    pub max_bulk: usize,
    /// The most arguments in one request.
    pub max_args: usize,
}

/// What Redis allows a client that has not authenticated yet (when a password is required):
/// 10 arguments of at most 16 KiB, with its own error texts.
pub const UNAUTHENTICATED: Limits = Limits {
    max_bulk: 16 * 1024,
    max_args: 10,
};

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 512 * 1024 * 1024,
            max_args: 1024 * 1024,
        }
    }
}

/// A protocol error: the client gets `-ERR Protocol error: <text>`, then the connection closes,
/// as Redis does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn new(text: &str) -> Self {
        ProtocolError(text.to_string())
    }
}

/// Resumable request decoder for one client connection.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    /// The client has not authenticated yet: `UNAUTHENTICATED` applies, with its texts.
    unauthenticated: bool,
    /// Arguments of the multibulk being read still to come; 0 between requests.
    remaining: usize,
    /// Arguments of the multibulk being read received so far.
    args: Vec<Bytes>,
    /// Length of the current bulk argument, once its `$len` line has been read.
    bulk: Option<usize>,
    /// How many bytes at the front of the buffer were already searched for the end of the
    /// current line without finding it.
    searched: usize,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            unauthenticated: false,
            remaining: 0,
            args: Vec::new(),
            bulk: None,
            searched: 0,
        }
    }

    /// Decode the next complete request from the front of `buf`, consuming its bytes.
    ///
    /// `Ok(Some(args))`: one request (never empty). `Ok(None)`: more bytes are needed; what was
    /// consumed so far is remembered. `Err`: a protocol error; the connection must be closed after
    /// the error is sent, and the decoder must not be used again.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        while self.remaining == 0 {
            match buf.first() {
                None => return Ok(None),
                Some(b'*') => {
                    let Some(line) = self.line(buf, "too big mbulk count string")? else {
                        return Ok(None);
                    };
                    let count = match parse_int(&line[1..]) {
                        Some(n) if n <= self.limits().max_args as i64 => n,
                        Some(_) if self.unauthenticated => {
                            return Err(ProtocolError::new("unauthenticated multibulk length"))
                        }
                        _ => return Err(ProtocolError::new("invalid multibulk length")),
                    };
                    // Redis silently skips `*0` and negative counts; so do we.
                    if count > 0 {
                        self.remaining = count as usize;
                        // Room for the arguments the bytes already here can hold (each takes
                        // at least `$0\r\n\r\n`), never for what a header merely claims: a
                        // wide MGET grows its list once, not ten times (benches/codec_choice).
                        let here = buf.len() / 6;
                        self.args = Vec::with_capacity(self.remaining.min(here.max(64)));
                    }
                }
                Some(_) => match self.inline(buf)? {
                    None => return Ok(None),
                    Some(args) if args.is_empty() => {}
                    Some(args) => return Ok(Some(args)),
                },
            }
        }
        self.multibulk(buf)
    }

    /// How many more bytes the current argument needs, when that is known: a hint for sizing
    /// the read buffer so that a large value is not reallocated at every read.
    /// Whether the client still has to authenticate: `UNAUTHENTICATED`'s limits apply instead
    /// of the configured ones, from the next request on.
    pub fn set_unauthenticated(&mut self, unauthenticated: bool) {
        self.unauthenticated = unauthenticated;
    }

    fn limits(&self) -> Limits {
        if self.unauthenticated {
            UNAUTHENTICATED
        } else {
            self.limits
        }
    }

    /// A request has begun and is not complete: part of it is in this decoder or in `buf`.
    pub fn mid_request(&self, buf: &BytesMut) -> bool {
        self.remaining != 0 || !buf.is_empty()
    }

    pub fn missing(&self, buf: &BytesMut) -> usize {
        match self.bulk {
            Some(len) => (len + 2).saturating_sub(buf.len()),
            None => 0,
        }
    }

    /// Read the remaining arguments of a multibulk, as far as `buf` goes.
    fn multibulk(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        while self.remaining > 0 {
            let len = match self.bulk {
                Some(len) => len,
                None => {
                    let Some(line) = self.line(buf, "too big bulk count string")? else {
                        return Ok(None);
                    };
                    let first = line.first().copied().unwrap_or(b'\r');
                    if first != b'$' {
                        return Err(ProtocolError(format!(
                            "expected '$', got '{}'",
                            char::from(first)
                        )));
                    }
                    let len = match parse_int(&line[1..]) {
                        Some(n) if n >= 0 && n as u64 <= self.limits().max_bulk as u64 => {
                            n as usize
                        }
                        Some(n) if n >= 0 && self.unauthenticated => {
                            return Err(ProtocolError::new("unauthenticated bulk length"))
                        }
                        _ => return Err(ProtocolError::new("invalid bulk length")),
                    };
                    self.bulk = Some(len);
                    len
                }
            };
            if buf.len() < len + 2 {
                return Ok(None);
            }
            if &buf[len..len + 2] != b"\r\n" {
                return Err(ProtocolError::new("expected CRLF after bulk payload"));
            }
            self.args.push(buf.split_to(len).freeze());
            let _ = buf.split_to(2);
            self.bulk = None;
            self.remaining -= 1;
        }
        Ok(Some(std::mem::take(&mut self.args)))
    }

    /// Take one `\r\n`-terminated line (without its ending) off the front of `buf`. A `\n`
    /// without its `\r` is an error at once, where Redis would wait for a `\r` that a client
    /// using bare LF never sends.
    fn line(
        &mut self,
        buf: &mut BytesMut,
        too_long: &str,
    ) -> Result<Option<BytesMut>, ProtocolError> {
        match memchr2(b'\r', b'\n', &buf[self.searched..]) {
            None => {
                self.searched = buf.len();
                if buf.len() > MAX_INLINE {
                    return Err(ProtocolError::new(too_long));
                }
                Ok(None)
            }
            Some(i) => {
                let cr = self.searched + i;
                if buf[cr] == b'\n' {
                    return Err(ProtocolError::new("expected CRLF at end of line"));
                }
                if cr > MAX_INLINE {
                    return Err(ProtocolError::new(too_long));
                }
                if buf.len() < cr + 2 {
                    self.searched = cr;
                    return Ok(None);
                }
                if buf[cr + 1] != b'\n' {
                    return Err(ProtocolError::new("expected CRLF at end of line"));
                }
                self.searched = 0;
                let line = buf.split_to(cr);
                let _ = buf.split_to(2);
                Ok(Some(line))
            }
        }
    }

    /// An inline command: one line, split into arguments as Redis's `sdssplitargs` splits it.
    fn inline(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let Some(i) = memchr(b'\n', &buf[self.searched..]) else {
            self.searched = buf.len();
            if buf.len() > MAX_INLINE {
                return Err(ProtocolError::new("too big inline request"));
            }
            return Ok(None);
        };
        let newline = self.searched + i;
        if newline > MAX_INLINE {
            return Err(ProtocolError::new("too big inline request"));
        }
        self.searched = 0;
        let mut line = buf.split_to(newline + 1);
        line.truncate(newline);
        if line.last() == Some(&b'\r') {
            line.truncate(newline - 1);
        }
        // Redis searches inline lines with strchr(), so a NUL hides the rest of the line and the
        // connection silently stops answering. A clear error is better than that.
        if memchr(0, &line).is_some() {
            return Err(ProtocolError::new("NUL byte in inline request"));
        }
        split_inline(&line)
            .map(Some)
            .ok_or_else(|| ProtocolError::new("unbalanced quotes in request"))
    }
}

/// Split an inline command line into arguments exactly as Redis's `sdssplitargs` does: words
/// separated by spaces, `"double quoted"` with `\n \r \t \b \a \\ \" \xHH` escapes, `'single
/// quoted'` with only `\'`; a closing quote must be followed by a space or the end of the line.
/// `None` means unbalanced quotes. The line holds no NUL (the caller refuses those).
pub fn split_inline(line: &[u8]) -> Option<Vec<Bytes>> {
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut args = Vec::new();
    let mut p = 0;
    loop {
        while p < line.len() && is_c_space(line[p]) {
            p += 1;
        }
        if p >= line.len() {
            return Some(args);
        }
        let mut current = Vec::new();
        let (mut in_double, mut in_single) = (false, false);
        loop {
            let c = at(p);
            if in_double {
                if c == b'\\'
                    && at(p + 1) == b'x'
                    && hex(at(p + 2)).is_some()
                    && hex(at(p + 3)).is_some()
                {
                    current.push(hex(at(p + 2))? * 16 + hex(at(p + 3))?);
                    p += 3;
                } else if c == b'\\' && p + 1 < line.len() {
                    p += 1;
                    current.push(match line[p] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                } else if c == b'"' {
                    if p + 1 < line.len() && !is_c_space(line[p + 1]) {
                        return None;
                    }
                    p += 1;
                    break;
                } else if p >= line.len() {
                    return None;
                } else {
                    current.push(c);
                }
            } else if in_single {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    current.push(b'\'');
                } else if c == b'\'' {
                    if p + 1 < line.len() && !is_c_space(line[p + 1]) {
                        return None;
                    }
                    p += 1;
                    break;
                } else if p >= line.len() {
                    return None;
                } else {
                    current.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => break,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    _ => current.push(c),
                }
            }
            if p < line.len() {
                p += 1;
            }
        }
        args.push(Bytes::from(current));
    }
}

/// C's isspace(): space, \t, \n, \v, \f, \r.
fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
