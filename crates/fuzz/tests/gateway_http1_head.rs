//! Fuzz target: the gateway's HTTP/1.1 fast path head parsers and body
//! framing (`gateway::h1`), which face every client and every upstream.
//! Property (checked by `gateway::h1::fuzz_request_head` /
//! `fuzz_response_head`): no panic; an accepted request head never carries
//! ambiguous framing (Transfer-Encoding with Content-Length, several
//! Content-Length fields, other than one Host in HTTP/1.1); parsed lengths
//! stay within the input and the head limit; a chunked body decodes the
//! same whether it arrives at once or byte by byte.

fn seeds() -> Vec<Vec<u8>> {
    [
        // Well-formed requests.
        "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\n",
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        // Smuggling attempts.
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /s HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 4, 4\r\n\r\n",
        // Responses.
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
        "HTTP/1.0 304 Not Modified\r\nContent-Length: 4, 4\r\nConnection: close\r\n\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

#[test]
fn fuzz_gateway_http1_head() {
    let report = fuzz::fuzz("gateway_http1_head", &seeds(), |input| {
        // The smallest allowed `max_header_bytes`, so the limit is reached.
        gateway::h1::fuzz_request_head(input, 8192);
        gateway::h1::fuzz_response_head(input);
    });
    assert!(report.executions > 0);
}
