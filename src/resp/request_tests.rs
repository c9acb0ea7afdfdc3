use super::*;

fn decode_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
    let mut dec = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(args) = dec.decode(&mut buf)? {
        out.push(args.iter().map(|a| a.to_vec()).collect());
    }
    Ok(out)
}

fn args(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|s| s.as_bytes().to_vec()).collect()
}

#[test]
fn multibulk_and_pipeline() {
    let got = decode_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n").unwrap();
    assert_eq!(got, vec![args(&["GET", "k"]), args(&["PING"])]);
}

#[test]
fn empty_and_negative_multibulk_are_skipped_like_redis() {
    let got = decode_all(b"*0\r\n*-1\r\n*-7\r\n*1\r\n$4\r\nPING\r\n").unwrap();
    assert_eq!(got, vec![args(&["PING"])]);
}

#[test]
fn byte_at_a_time_gives_the_same_result() {
    let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\nGET   k\r\n*1\r\n$0\r\n\r\n";
    let mut dec = Decoder::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for &b in input.iter() {
        buf.extend_from_slice(&[b]);
        while let Some(a) = dec.decode(&mut buf).unwrap() {
            got.push(a.iter().map(|x| x.to_vec()).collect::<Vec<_>>());
        }
    }
    assert_eq!(
        got,
        vec![
            args(&["SET", "k", "hello"]),
            args(&["GET", "k"]),
            args(&[""])
        ]
    );
}

#[test]
fn inline_commands_split_like_sdssplitargs() {
    let got = decode_all(
        b"set a \"x\\ty\\x41\\\"\"\r\nget 'it\\'s'\n  \r\n\r\nping\r\necho \"a\\zb\" ''\r\n",
    )
    .unwrap();
    assert_eq!(
        got,
        vec![
            args(&["set", "a", "x\tyA\""]),
            args(&["get", "it's"]),
            args(&["ping"]),
            args(&["echo", "azb", ""]),
        ]
    );
}

#[test]
fn inline_nul_is_refused() {
    assert_eq!(
        decode_all(b"get a\0b c\r\n"),
        Err(ProtocolError::new("NUL byte in inline request"))
    );
}

#[test]
fn protocol_errors_carry_redis_texts() {
    let cases: &[(&[u8], &str)] = &[
        (b"*1\r\n*1\r\n$4\r\nPING\r\n", "expected '$', got '*'"),
        (b"*1\r\n:1\r\n", "expected '$', got ':'"),
        (b"*x\r\n", "invalid multibulk length"),
        (b"*1048577\r\n", "invalid multibulk length"),
        (b"*99999999999999999999\r\n", "invalid multibulk length"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$abc\r\n", "invalid bulk length"),
        (b"*1\r\n$536870913\r\n", "invalid bulk length"),
        (b"*1\r\n$3\r\nGETxx", "expected CRLF after bulk payload"),
        (b"*1\n$3\nGET\n", "expected CRLF at end of line"),
        (b"*1\r\n$3\nGET\r\n", "expected CRLF at end of line"),
        (b"set a \"b\r\n", "unbalanced quotes in request"),
        (b"set a \"b\"c\r\n", "unbalanced quotes in request"),
        (b"set a 'b\r\n", "unbalanced quotes in request"),
        (b"*1\r\n\r\n", "expected '$', got '\r'"),
        (b"*1\rx", "expected CRLF at end of line"),
    ];
    for (input, want) in cases {
        let mut dec = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(*input);
        let got = loop {
            match dec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("{:?}: no error", String::from_utf8_lossy(input)),
                Err(e) => break e,
            }
        };
        assert_eq!(got.0, *want, "{:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn long_lines_are_refused_at_the_limit() {
    let mut dec = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&vec![b'a'; MAX_INLINE][..]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"a");
    assert_eq!(
        dec.decode(&mut buf),
        Err(ProtocolError::new("too big inline request"))
    );
    let mut dec = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"*1\r\n$"[..]);
    buf.extend_from_slice(&vec![b'1'; MAX_INLINE + 2]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(ProtocolError::new("too big bulk count string"))
    );
}

#[test]
fn announced_counts_allocate_nothing_up_front() {
    let mut dec = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"*1048576\r\n$536870912\r\nab"[..]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    assert!(dec.args.capacity() <= 64);
    assert_eq!(dec.missing(&buf), 536870912);
}

#[test]
fn configured_limits_apply() {
    let limits = Limits {
        max_bulk: 10,
        max_args: 3,
    };
    let mut dec = Decoder::new(limits);
    let mut buf = BytesMut::from(&b"*4\r\n"[..]);
    assert!(dec.decode(&mut buf).is_err());
    let mut dec = Decoder::new(limits);
    let mut buf = BytesMut::from(&b"*1\r\n$11\r\n"[..]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(ProtocolError::new("invalid bulk length"))
    );
}

#[test]
fn million_arguments_in_small_pieces_decode_in_linear_time() {
    let n = 1_000_000;
    let mut input = format!("*{n}\r\n").into_bytes();
    for _ in 0..n {
        input.extend_from_slice(b"$1\r\nx\r\n");
    }
    let mut dec = Decoder::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut got = None;
    for piece in input.chunks(7) {
        buf.extend_from_slice(piece);
        if let Some(a) = dec.decode(&mut buf).unwrap() {
            got = Some(a.len());
        }
    }
    assert_eq!(got, Some(n));
}
