//! Tests of `lab::http_apps`: the special paths, the JSON description over HTTP/1.1 and
//! h2c, timeouts, many requests on one connection, gRPC trailers, malformed bytes, and
//! error messages. They run in the current netns, over loopback; no root needed.

use super::*;

fn server(name: &str) -> SocketAddr {
    serve_http_on(&Netns::current(), "127.0.0.1:0".parse().unwrap(), name).unwrap()
}

fn get(addr: SocketAddr, path: &str, h2: bool) -> HttpReply {
    let req = Request::get(path).body(Bytes::new()).unwrap();
    http_request(&Netns::current(), addr, req, h2, CLIENT_TIMEOUT).unwrap()
}

#[test]
fn plan_reads_special_paths() {
    let cases: &[(&str, Plan)] = &[
        ("/", Plan::Describe),
        ("/delay", Plan::Describe),
        ("/delay/250", Plan::Delay(Duration::from_millis(250))),
        ("/status/503", Plan::Status(StatusCode::SERVICE_UNAVAILABLE)),
        ("/bytes/7", Plan::Bytes(7)),
    ];
    for (path, want) in cases {
        assert_eq!(&plan(path), want, "{path}");
    }
    for bad in [
        "/delay/x",
        "/delay/600001",
        "/status/99",
        "/status/600",
        "/bytes/-1",
    ] {
        assert!(matches!(plan(bad), Plan::Bad(_)), "{bad}");
    }
}

#[test]
fn grpc_message_checks_the_prefix() {
    let f = grpc_frame(b"hi");
    assert_eq!(&f[..], b"\x00\x00\x00\x00\x02hi");
    assert_eq!(grpc_message(&f).unwrap(), Bytes::from_static(b"hi"));
    assert_eq!(grpc_message(&Bytes::new()).unwrap(), Bytes::new());
    assert!(
        grpc_message(&f.slice(..6))
            .unwrap_err()
            .contains("truncated")
    );
    let two = Bytes::from([&f[..], &f[..]].concat());
    assert!(grpc_message(&two).unwrap_err().contains("one message"));
    assert!(grpc_message(&Bytes::from_static(b"\x01\0\0\0\0")).is_err());
}

#[test]
fn http1_get_describes_the_request() {
    let addr = server("echo-v1");
    let ns = Netns::current();
    let r = http_get(&ns, addr, "/hello?x=1", &[("x-test", "a"), ("X-Two", "b")]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-served-by"), Some("echo-v1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json().unwrap();
    assert_eq!(j["pod"], "echo-v1");
    assert_eq!(j["method"], "GET");
    assert_eq!(j["path"], "/hello?x=1");
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(j["headers"]["x-test"], "a");
    assert_eq!(j["headers"]["x-two"], "b");
    assert_eq!(j["headers"]["host"], addr.to_string());
    assert_eq!(j["authority"], addr.to_string());
    assert_eq!(j["peer"], "127.0.0.1");
    assert_eq!(j["bodyLength"], 0);
}

#[test]
fn post_body_length_and_host_from_uri() {
    let addr = server("sink");
    let req = Request::post("http://reviews.default.svc:9080/p")
        .body(Bytes::from(vec![7u8; 1234]))
        .unwrap();
    for h2 in [false, true] {
        let r = http_request(&Netns::current(), addr, req.clone(), h2, CLIENT_TIMEOUT).unwrap();
        let j = r.json().unwrap();
        assert_eq!(j["method"], "POST");
        assert_eq!(j["path"], "/p");
        assert_eq!(j["bodyLength"], 1234, "h2 {h2}");
        assert_eq!(j["authority"], "reviews.default.svc:9080", "h2 {h2}");
    }
}

#[test]
fn h2c_get_is_http2() {
    let addr = server("echo-h2");
    let r = get(addr, "/x?y", true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-served-by"), Some("echo-h2"));
    let j = r.json().unwrap();
    assert_eq!(j["version"], "HTTP/2");
    assert_eq!(j["path"], "/x?y");
    assert_eq!(j["authority"], addr.to_string());
}

#[test]
fn status_delay_and_bytes() {
    let addr = server("special");
    for h2 in [false, true] {
        let r = get(addr, "/status/503", h2);
        assert_eq!(r.status, 503);
        assert_eq!(r.json().unwrap()["pod"], "special");
        let r = get(addr, "/status/nope", h2);
        assert_eq!(r.status, 400);
        assert!(
            r.json().unwrap()["error"]
                .as_str()
                .unwrap()
                .contains("/status")
        );

        let t = Instant::now();
        let r = get(addr, "/delay/200", h2);
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(r.status, 200);

        let r = get(addr, "/bytes/100000", h2);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        assert_eq!(r.body.len(), 100_000);
        assert!(r.body.iter().all(|b| *b == b'x'));
    }
}

#[test]
fn timeout_is_reported() {
    let addr = server("slow");
    let req = Request::get("/delay/2000").body(Bytes::new()).unwrap();
    let t = Instant::now();
    let e = http_request(
        &Netns::current(),
        addr,
        req,
        false,
        Duration::from_millis(200),
    )
    .unwrap_err();
    assert!(e.contains("no answer within"), "{e}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn many_requests_share_one_connection() {
    let addr = server("pool");
    let ns = Netns::current();
    for h2 in [false, true] {
        let rs = http_requests(&ns, addr, 20, "/r", h2).unwrap();
        assert_eq!(rs.len(), 20);
        let ports: Vec<_> = rs
            .iter()
            .map(|r| {
                assert_eq!(r.status, 200);
                r.json().unwrap()["peerPort"].as_u64().unwrap()
            })
            .collect();
        assert!(ports.iter().all(|p| *p == ports[0]), "h2 {h2}: {ports:?}");
    }
    // Separate calls are separate connections.
    let a = http_get(&ns, addr, "/", &[]).unwrap().json().unwrap();
    let b = http_get(&ns, addr, "/", &[]).unwrap().json().unwrap();
    assert_ne!(a["peerPort"], b["peerPort"]);
}

#[test]
fn grpc_ok_and_fail_trailers() {
    let addr = server("echo-v1");
    let ns = Netns::current();
    let (status, grpc, msg) = grpc_call(&ns, addr, "/echo.Echo/Say", b"hello").unwrap();
    assert_eq!(status, 200);
    assert_eq!(grpc.as_deref(), Some("0"));
    assert_eq!(&msg[..], b"echo-v1 /echo.Echo/Say");

    let (status, grpc, msg) = grpc_call(&ns, addr, GRPC_FAIL_PATH, b"").unwrap();
    assert_eq!(status, 200);
    assert_eq!(grpc.as_deref(), Some("13"));
    assert_eq!(&msg[..], b"echo-v1 /echo.Echo/Fail");

    // The status comes in real trailers, not in the headers.
    let req = Request::post(GRPC_FAIL_PATH)
        .header(CONTENT_TYPE, "application/grpc")
        .body(grpc_frame(b""))
        .unwrap();
    let r = http_request(&ns, addr, req, true, CLIENT_TIMEOUT).unwrap();
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert!(r.headers.get("grpc-status").is_none());
    let t = r.trailers.expect("trailers");
    assert_eq!(t.get("grpc-status").unwrap(), "13");
    assert_eq!(t.get("grpc-message").unwrap(), "failed");

    // gRPC needs HTTP/2: over HTTP/1.1 the app describes the request instead.
    let req = Request::post("/echo.Echo/Say")
        .header(CONTENT_TYPE, "application/grpc")
        .body(grpc_frame(b"x"))
        .unwrap();
    let r = http_request(&ns, addr, req, false, CLIENT_TIMEOUT).unwrap();
    assert_eq!(r.json().unwrap()["bodyLength"], 6);
}

#[test]
fn raw_garbage_gets_400_or_close() {
    let addr = server("raw");
    let out = raw_exchange(
        &Netns::current(),
        addr,
        b"\x01\x02 garbage\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    // A valid request on a kept-alive connection is answered, then the wait times out:
    // an open connection is not a close.
    let e = raw_exchange(
        &Netns::current(),
        addr,
        b"GET /ok HTTP/1.1\r\nhost: a\r\n\r\n",
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(
        e.contains("timed out") && e.contains("did not close"),
        "{e}"
    );
    assert!(e.contains("HTTP/1.1 200"), "{e}");
    // With `connection: close` the server closes after answering.
    let out = raw_exchange(
        &Netns::current(),
        addr,
        b"GET /ok HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(out.starts_with(b"HTTP/1.1 200"));
}

#[test]
fn dual_stack_peer_is_ipv4() {
    // [::] as serve_http binds: an IPv4 client shows as IPv4, not ::ffff:127.0.0.1.
    let Ok(bound) = serve_http_on(&Netns::current(), "[::]:0".parse().unwrap(), "dual") else {
        eprintln!("no IPv6 here: skipped");
        return;
    };
    let addr: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, bound.port()).into();
    let j = http_get(&Netns::current(), addr, "/", &[])
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(j["peer"], "127.0.0.1");
}

#[test]
fn errors_name_the_problem() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = http_get(&Netns::current(), free, "/", &[]).unwrap_err();
    assert!(
        e.contains("connect to") && e.contains(&free.to_string()),
        "{e}"
    );
    assert!(serve_http_on(&Netns::current(), free, "bad\nname").is_err());
}
