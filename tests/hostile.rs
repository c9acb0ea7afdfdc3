//! Hostile and malformed client input: each case gets the reply Redis would give (a protocol
//! error closes only that connection), keygate stays up, and a bystander client that was mid-way
//! through its own work is unaffected.

mod common;

use common::{bulk, Keygate, Raw, Redis};

/// (name, bytes sent, expected reply, connection closed afterwards)
fn cases() -> Vec<(&'static str, Vec<u8>, Vec<u8>, bool)> {
    let proto = |text: &str| format!("-ERR Protocol error: {text}\r\n").into_bytes();
    let mut long_inline = vec![b'a'; 64 * 1024 + 10];
    long_inline.extend_from_slice(b"\r\n");
    let mut long_count = b"*".to_vec();
    long_count.extend_from_slice(&[b'1'; 70_000]);
    let mut long_bulk_len = b"*1\r\n$".to_vec();
    long_bulk_len.extend_from_slice(&[b'1'; 70_000]);
    vec![
        (
            "bulk length over max_request_bytes",
            b"*1\r\n$536870913\r\n".to_vec(),
            proto("invalid bulk length"),
            true,
        ),
        (
            "negative bulk length",
            b"*1\r\n$-5\r\n".to_vec(),
            proto("invalid bulk length"),
            true,
        ),
        (
            "null bulk in a request",
            b"*1\r\n$-1\r\n".to_vec(),
            proto("invalid bulk length"),
            true,
        ),
        (
            "non-numeric bulk length",
            b"*1\r\n$abc\r\n".to_vec(),
            proto("invalid bulk length"),
            true,
        ),
        (
            "overflowing bulk length",
            b"*1\r\n$99999999999999999999\r\n".to_vec(),
            proto("invalid bulk length"),
            true,
        ),
        (
            "bulk length with a plus sign",
            b"*1\r\n$+4\r\nPING\r\n".to_vec(),
            proto("invalid bulk length"),
            true,
        ),
        (
            "multibulk count over the limit",
            b"*1048577\r\n".to_vec(),
            proto("invalid multibulk length"),
            true,
        ),
        (
            "non-numeric multibulk count",
            b"*abc\r\n".to_vec(),
            proto("invalid multibulk length"),
            true,
        ),
        (
            "overflowing multibulk count",
            b"*99999999999999999999999\r\n".to_vec(),
            proto("invalid multibulk length"),
            true,
        ),
        (
            "nested array in a request",
            b"*1\r\n*1\r\n$4\r\nPING\r\n".to_vec(),
            proto("expected '$', got '*'"),
            true,
        ),
        (
            "integer instead of bulk",
            b"*2\r\n$3\r\nGET\r\n:1\r\n".to_vec(),
            proto("expected '$', got ':'"),
            true,
        ),
        (
            "inline line over 64 KiB",
            long_inline,
            proto("too big inline request"),
            true,
        ),
        (
            "multibulk count line over 64 KiB",
            long_count,
            proto("too big mbulk count string"),
            true,
        ),
        (
            "bulk length line over 64 KiB",
            long_bulk_len,
            proto("too big bulk count string"),
            true,
        ),
        (
            "missing CRLF after a bulk payload",
            b"*1\r\n$4\r\nPINGxx*1\r\n$4\r\nPING\r\n".to_vec(),
            proto("expected CRLF after bulk payload"),
            true,
        ),
        (
            "LF-only line ends",
            b"*1\n$4\nPING\n".to_vec(),
            proto("expected CRLF at end of line"),
            true,
        ),
        (
            "CR without LF",
            b"*1\rX$4\r\nPING\r\n".to_vec(),
            proto("expected CRLF at end of line"),
            true,
        ),
        (
            "unbalanced double quotes",
            b"SET a \"b\r\n".to_vec(),
            proto("unbalanced quotes in request"),
            true,
        ),
        (
            "text after a closing quote",
            b"SET a \"b\"c\r\n".to_vec(),
            proto("unbalanced quotes in request"),
            true,
        ),
        (
            "unbalanced single quotes",
            b"SET a 'b\r\n".to_vec(),
            proto("unbalanced quotes in request"),
            true,
        ),
        // As Redis: `Host:` or `POST` closes at once, dropping even the replies already due.
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: example\r\n\r\n".to_vec(),
            Vec::new(),
            true,
        ),
        (
            "HTTP POST",
            b"POST /x HTTP/1.1\r\n".to_vec(),
            Vec::new(),
            true,
        ),
        // Not errors in Redis either: skipped silently, connection kept.
        (
            "empty and negative multibulks",
            b"*0\r\n*-1\r\n*-3\r\n\r\n   \r\n*1\r\n$4\r\nPING\r\n".to_vec(),
            b"+PONG\r\n".to_vec(),
            false,
        ),
        (
            "binary garbage inline",
            b"\xff\xfe\x01\r\n".to_vec(),
            b"-ERR unknown command '\xff\xfe\x01', with args beginning with: \r\n".to_vec(),
            false,
        ),
        // Redis wedges the connection silently here (its strchr stops at the NUL).
        (
            "NUL byte in an inline command",
            b"ECHO a\0b\r\nPING\r\n".to_vec(),
            proto("NUL byte in inline request"),
            true,
        ),
        (
            "empty command name",
            b"*1\r\n$0\r\n\r\n".to_vec(),
            b"-ERR unknown command '', with args beginning with: \r\n".to_vec(),
            false,
        ),
        (
            "wrong arity",
            b"*1\r\n$3\r\nGET\r\n".to_vec(),
            b"-ERR wrong number of arguments for 'get' command\r\n".to_vec(),
            false,
        ),
        // The cases below were checked against redis-server 7.0.15 byte for byte.
        (
            "1 MiB inline line",
            [vec![b'a'; 1024 * 1024], b"\r\n".to_vec()].concat(),
            proto("too big inline request"),
            true,
        ),
        (
            "empty multibulk count",
            b"*\r\n".to_vec(),
            proto("invalid multibulk length"),
            true,
        ),
        (
            "empty bulk length",
            b"*1\r\n$\r\n".to_vec(),
            proto("invalid bulk length"),
            true,
        ),
        (
            "space in a multibulk count",
            b"* 1\r\n".to_vec(),
            proto("invalid multibulk length"),
            true,
        ),
        (
            "leading zero in a multibulk count",
            b"*01\r\n$4\r\nPING\r\n".to_vec(),
            proto("invalid multibulk length"),
            true,
        ),
        (
            "leading zero in a bulk length",
            b"*1\r\n$04\r\nPING\r\n".to_vec(),
            proto("invalid bulk length"),
            true,
        ),
        (
            "10 000 nested arrays",
            b"*1\r\n".repeat(10_000),
            proto("expected '$', got '*'"),
            true,
        ),
        (
            "integer element after bulk ones",
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n:1\r\n".to_vec(),
            proto("expected '$', got ':'"),
            true,
        ),
        (
            "inline line of spaces (ignored, as Redis)",
            b"   \r\n".to_vec(),
            Vec::new(),
            false,
        ),
        (
            "unterminated escape inside quotes",
            b"ECHO \"abc\\\r\n".to_vec(),
            proto("unbalanced quotes in request"),
            true,
        ),
        (
            "RESP3 attribute type as a request",
            b"|1\r\n".to_vec(),
            b"-ERR unknown command '|1', with args beginning with: \r\n".to_vec(),
            false,
        ),
        (
            "HELLO with an overflowing protocol version",
            b"HELLO 99999999999999999999\r\n".to_vec(),
            b"-ERR Protocol version is not an integer or out of range\r\n".to_vec(),
            false,
        ),
        (
            "escapes inside quotes",
            b"ECHO \"a\\x41\\n\"\r\n".to_vec(),
            b"$3\r\naA\n\r\n".to_vec(),
            false,
        ),
        (
            "very long command name",
            format!("*1\r\n${}\r\n{}\r\n", 300, "x".repeat(300)).into_bytes(),
            format!(
                "-ERR unknown command '{}', with args beginning with: \r\n",
                "x".repeat(128)
            )
            .into_bytes(),
            false,
        ),
    ]
}

#[tokio::test]
async fn each_hostile_input_is_refused_and_others_are_unaffected() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut bystander = kg.raw().await;
    assert_eq!(bystander.call(&[b"SET", b"mine", b"0"]).await, b"+OK\r\n");
    for (i, (name, input, want, closes)) in cases().into_iter().enumerate() {
        // The bystander has a pipeline in flight while the attack happens.
        bystander
            .send(b"*2\r\n$4\r\nINCR\r\n$4\r\nmine\r\n*2\r\n$3\r\nGET\r\n$4\r\nmine\r\n")
            .await;
        let mut attacker = kg.raw().await;
        attacker.send(&input).await;
        if !want.is_empty() {
            let got = attacker.reply().await.unwrap_or_default();
            assert_eq!(
                got.escape_ascii().to_string(),
                want.escape_ascii().to_string(),
                "case {name}"
            );
        }
        if closes {
            attacker.expect_closed().await;
        } else {
            assert_eq!(
                attacker.call(&[b"PING"]).await,
                b"+PONG\r\n",
                "case {name}: connection must stay usable"
            );
        }
        assert_eq!(
            bystander.reply().await.unwrap(),
            format!(":{}\r\n", i + 1).into_bytes(),
            "case {name}"
        );
        assert_eq!(
            bystander.reply().await.unwrap(),
            bulk(&(i + 1).to_string()),
            "case {name}"
        );
    }
    assert_eq!(
        Raw::connect(kg.addr).await.call(&[b"PING"]).await,
        b"+PONG\r\n"
    );
}

/// Replies to the requests before a protocol error are still delivered, in order, before the
/// error and the close.
#[tokio::test]
async fn requests_before_a_protocol_error_are_answered_first() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut raw = kg.raw().await;
    raw.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$x\r\n*1\r\n$4\r\nPING\r\n").await;
    assert_eq!(raw.reply().await.unwrap(), b"+OK\r\n");
    assert_eq!(raw.reply().await.unwrap(), bulk("v"));
    assert_eq!(
        raw.reply().await.unwrap(),
        b"-ERR Protocol error: invalid bulk length\r\n"
    );
    raw.expect_closed().await;
}

/// A million-argument command sent in small pieces, and a long pipeline sent one byte at a time,
/// decode correctly (the decoder resumes where it stopped instead of rescanning).
#[tokio::test]
async fn huge_commands_in_small_pieces() {
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let mut raw = kg.raw().await;
    let n = 1_000_000;
    let mut command = format!("*{}\r\n$5\r\nRPUSH\r\n$4\r\nlist\r\n", n + 2).into_bytes();
    for i in 0..n {
        command.extend_from_slice(&bulk(&(i % 10).to_string()));
    }
    for piece in command.chunks(1400) {
        raw.send(piece).await;
    }
    assert_eq!(raw.reply().await.unwrap(), format!(":{n}\r\n").into_bytes());

    let mut pipeline = Vec::new();
    for i in 0..200 {
        pipeline.extend_from_slice(format!("ECHO m{i}\r\n").as_bytes());
    }
    for byte in &pipeline {
        raw.send(std::slice::from_ref(byte)).await;
    }
    for i in 0..200 {
        assert_eq!(raw.reply().await.unwrap(), bulk(&format!("m{i}")));
    }
}

/// Configured limits apply to bulk sizes and argument counts.
#[tokio::test]
async fn configured_request_limits() {
    let backend = Redis::start();
    let kg = Keygate::start_with(
        &backend.addr(),
        "[limits]\nmax_request_bytes = \"1KiB\"\nmax_request_args = 3\n",
    )
    .await;
    let mut raw = kg.raw().await;
    let value = "v".repeat(1024);
    assert_eq!(
        raw.call(&[b"SET", b"k", value.as_bytes()]).await,
        b"+OK\r\n"
    );
    raw.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1025\r\n").await;
    assert_eq!(
        raw.reply().await.unwrap(),
        b"-ERR Protocol error: invalid bulk length\r\n"
    );
    raw.expect_closed().await;
    let mut raw = kg.raw().await;
    raw.send(b"*4\r\n").await;
    assert_eq!(
        raw.reply().await.unwrap(),
        b"-ERR Protocol error: invalid multibulk length\r\n"
    );
    raw.expect_closed().await;
}

/// Over `max_clients`, a new client gets Redis's error and is closed; existing ones carry on.
#[tokio::test]
async fn max_clients_is_enforced() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), "[limits]\nmax_clients = 2\n").await;
    let mut a = kg.raw().await;
    let mut b = kg.raw().await;
    assert_eq!(a.call(&[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(b.call(&[b"PING"]).await, b"+PONG\r\n");
    let mut c = kg.raw().await;
    assert_eq!(
        c.reply().await.unwrap(),
        b"-ERR max number of clients reached\r\n"
    );
    c.expect_closed().await;
    assert_eq!(a.call(&[b"PING"]).await, b"+PONG\r\n");
    drop(b);
    // The slot frees once keygate notices the close.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut d = kg.raw().await;
        d.send(b"PING\r\n").await;
        if d.reply().await == Some(b"+PONG\r\n".to_vec()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An idle client is closed after `client_idle_timeout`.
#[tokio::test]
async fn idle_clients_are_closed() {
    let backend = Redis::start();
    let kg = Keygate::start_with(
        &backend.addr(),
        "[limits]\nclient_idle_timeout = \"200ms\"\n",
    )
    .await;
    let mut raw = kg.raw().await;
    assert_eq!(raw.call(&[b"PING"]).await, b"+PONG\r\n");
    raw.expect_closed().await;
}

/// A client that pipelines reads of a large value and never reads the replies: keygate buffers
/// at most `client_output_limit` for it, then disconnects it; others carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_at_the_output_limit() {
    let backend = Redis::start();
    let kg = Keygate::start_with(
        &backend.addr(),
        "[limits]\nclient_output_limit = \"1MiB\"\n",
    )
    .await;
    let mut bystander = kg.raw().await;
    let value = vec![b'v'; 200 * 1024];
    let mut set = bytes::BytesMut::new();
    keygate::resp::encode_request(
        &[
            bytes::Bytes::from_static(b"SET"),
            bytes::Bytes::from_static(b"big"),
            bytes::Bytes::from(value),
        ],
        &mut set,
    );
    bystander.send(&set).await;
    assert_eq!(bystander.reply().await.unwrap(), b"+OK\r\n");
    let mut greedy = kg.raw().await;
    greedy.send(&b"GET big\r\n".repeat(200)).await;
    // 40 MB of replies were asked for; the socket buffers hold a few, keygate at most 1 MiB more.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut got = 0usize;
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            match greedy.reply().await {
                Some(reply) => got += reply.len(),
                None => return got,
            }
        }
    })
    .await
    .expect("the client was never disconnected");
    assert!(
        closed < 200 * 200 * 1024,
        "all {closed} bytes were delivered"
    );
    assert_eq!(bystander.call(&[b"STRLEN", b"big"]).await, b":204800\r\n");
}

/// Slowloris: a request sent a byte at a time does not hold a connection forever; a long
/// pipeline streamed in pieces that split requests is not mistaken for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_must_arrive_whole_within_the_frame_timeout() {
    let backend = Redis::start();
    let kg = Keygate::start_with(&backend.addr(), "[limits]\nframe_timeout = \"400ms\"\n").await;
    let mut slow = kg.raw().await;
    let started = std::time::Instant::now();
    // Six bytes of a request over 360 ms, then nothing more.
    for byte in b"*2\r\n$3" {
        slow.send(&[*byte]).await;
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    }
    assert_eq!(
        slow.reply().await.unwrap(),
        b"-ERR keygate: the request did not arrive whole in time (limits.frame_timeout)\r\n"
    );
    slow.expect_closed().await;
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    // 3 000 requests streamed for about 1.5 s in 7-byte pieces: every one answered.
    let mut stream = kg.raw().await;
    let pipeline = b"INCR n\r\n".repeat(3000);
    for piece in pipeline.chunks(7 * 50) {
        for small in piece.chunks(7) {
            stream.send(small).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let mut last = Vec::new();
    for _ in 0..3000 {
        last = stream.reply().await.expect("a reply, not a close");
    }
    assert_eq!(last, b":3000\r\n");
}

/// With tenants, a connection that never authenticates is closed after `auth_timeout`.
#[tokio::test]
async fn unauthenticated_connections_are_closed_after_the_auth_timeout() {
    let backend = Redis::start();
    let kg = Keygate::start_with(
        &backend.addr(),
        "[limits]\nauth_timeout = \"300ms\"\n\
         [[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\n",
    )
    .await;
    let mut idle = kg.raw().await;
    let mut authed = kg.raw().await;
    assert_eq!(
        authed.call(&[b"AUTH", b"acme", b"acme-pw"]).await,
        b"+OK\r\n"
    );
    assert_eq!(
        idle.reply().await.unwrap(),
        b"-ERR keygate: no AUTH in time (limits.auth_timeout)\r\n"
    );
    idle.expect_closed().await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(authed.call(&[b"PING"]).await, b"+PONG\r\n");
}

/// With tenants (so clients must AUTH), an unauthenticated client may send what Redis allows
/// one with `requirepass`: 10 arguments of 16 KiB at most, with Redis's texts; after AUTH, the
/// configured limits (even for the request right after AUTH in the same pipeline).
#[tokio::test]
async fn unauthenticated_clients_get_redis_unauthenticated_limits() {
    let backend = Redis::start();
    let kg = Keygate::start_with(
        &backend.addr(),
        "[[tenants]]\nname = \"acme\"\npassword = \"acme-pw\"\nprefix = \"acme:\"\n",
    )
    .await;
    let mut raw = kg.raw().await;
    raw.send(b"*11\r\n").await;
    assert_eq!(
        raw.reply().await.unwrap(),
        b"-ERR Protocol error: unauthenticated multibulk length\r\n"
    );
    raw.expect_closed().await;
    let mut raw = kg.raw().await;
    raw.send(b"*1\r\n$16385\r\n").await;
    assert_eq!(
        raw.reply().await.unwrap(),
        b"-ERR Protocol error: unauthenticated bulk length\r\n"
    );
    raw.expect_closed().await;
    // AUTH, then at once a 20 KiB value in the same write.
    let mut raw = kg.raw().await;
    let mut pipeline = b"*3\r\n$4\r\nAUTH\r\n$4\r\nacme\r\n$7\r\nacme-pw\r\n".to_vec();
    pipeline.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$20480\r\n");
    pipeline.extend_from_slice(&[b'x'; 20480]);
    pipeline.extend_from_slice(b"\r\n");
    raw.send(&pipeline).await;
    assert_eq!(raw.reply().await.unwrap(), b"+OK\r\n");
    assert_eq!(raw.reply().await.unwrap(), b"+OK\r\n");
}

/// Ten million commands streamed down one connection while the replies are read as they come:
/// every one answered, in order, with memory bounded by the pipeline limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_million_commands_streamed() {
    const N: usize = 10_000_000;
    let backend = Redis::start();
    let kg = Keygate::start(&backend.addr()).await;
    let stream = tokio::net::TcpStream::connect(kg.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        // PING is answered by keygate itself: this measures the proxy, not Redis.
        let chunk = b"PING\r\n".repeat(10_000);
        for _ in 0..N / 10_000 {
            wr.write_all(&chunk).await.unwrap();
        }
        wr
    });
    let mut seen = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let mut carry = 0usize;
    while seen < N {
        use tokio::io::AsyncReadExt;
        let n = rd.read(&mut buf[carry..]).await.unwrap();
        assert!(n > 0, "closed after {seen} replies");
        let total = carry + n;
        let whole = total / 7 * 7;
        for reply in buf[..whole].chunks(7) {
            assert_eq!(reply, b"+PONG\r\n", "reply {seen}");
            seen += 1;
        }
        buf.copy_within(whole..total, 0);
        carry = total - whole;
    }
    drop(writer.await.unwrap());
    assert_eq!(seen, N);
}
