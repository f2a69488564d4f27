//! HPACK tests: RFC 7541 Appendix C examples, encoder/decoder round trips with the dynamic
//! table, size updates and every decoding error.

use bytes::Bytes;

use super::hpack::{Decoder, Encoder, HpackError};
use super::message::HeaderField;

fn hex(s: &str) -> Bytes {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    Bytes::from(
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>(),
    )
}

fn pairs(fields: &[HeaderField]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|f| {
            (
                String::from_utf8(f.name.to_vec()).unwrap(),
                String::from_utf8(f.value.to_vec()).unwrap(),
            )
        })
        .collect()
}

fn expect(fields: &[HeaderField], want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(pairs(fields), want);
}

fn decode(d: &mut Decoder, block: &Bytes) -> Vec<HeaderField> {
    let mut out = Vec::new();
    assert!(d.decode(block, &mut out, usize::MAX).unwrap());
    out
}

fn table(d: &Decoder) -> Vec<(String, String)> {
    d.table
        .entries()
        .map(|(n, v)| {
            (
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            )
        })
        .collect()
}

/// C.3 (no Huffman) and C.4 (Huffman): three requests sharing one dynamic table.
#[test]
fn rfc7541_c3_c4_requests() {
    for blocks in [
        [
            "828684410f7777772e6578616d706c652e636f6d",
            "828684be58086e6f2d6361636865",
            "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
        ],
        [
            "828684418cf1e3c2e5f23a6ba0ab90f4ff",
            "828684be5886a8eb10649cbf",
            "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
        ],
    ] {
        let mut d = Decoder::new();
        let f = decode(&mut d, &hex(blocks[0]));
        expect(
            &f,
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ],
        );
        assert_eq!(d.table.size(), 57);
        let f = decode(&mut d, &hex(blocks[1]));
        expect(
            &f,
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ],
        );
        assert_eq!(d.table.size(), 110);
        let f = decode(&mut d, &hex(blocks[2]));
        expect(
            &f,
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ],
        );
        assert_eq!(d.table.size(), 164);
        assert_eq!(
            table(&d)[0],
            ("custom-key".to_string(), "custom-value".to_string())
        );
    }
}

/// C.6: responses with Huffman and a 256-octet table, so entries are evicted.
#[test]
fn rfc7541_c6_responses_with_eviction() {
    let mut d = Decoder::new();
    d.set_limit(256);
    // The encoder announces the smaller table first.
    let mut block = hex("3fe101");
    assert_eq!(block.len(), 3);
    decode(&mut d, &block);
    assert_eq!(d.table.max_size(), 256);
    block = hex(
        "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
    );
    let f = decode(&mut d, &block);
    expect(
        &f,
        &[
            (":status", "302"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com"),
        ],
    );
    assert_eq!(d.table.size(), 222);
    let f = decode(&mut d, &hex("4883640effc1c0bf"));
    expect(
        &f,
        &[
            (":status", "307"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com"),
        ],
    );
    assert_eq!(d.table.size(), 222);
    let f = decode(
        &mut d,
        &hex(
            "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
        ),
    );
    expect(
        &f,
        &[
            (":status", "200"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ("location", "https://www.example.com"),
            ("content-encoding", "gzip"),
            (
                "set-cookie",
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
            ),
        ],
    );
    assert_eq!(d.table.size(), 215);
    assert_eq!(d.table.len(), 3);
}

fn hbone_fields(n: usize) -> Vec<HeaderField> {
    vec![
        HeaderField::new(&b":method"[..], &b"CONNECT"[..]),
        HeaderField::new(
            &b":authority"[..],
            Bytes::from(format!("10.0.0.{}:8080", n % 7)),
        ),
        HeaderField::new(
            &b"forwarded"[..],
            Bytes::from(format!("for=\"10.1.0.{n}:4000\"")),
        ),
        HeaderField::new(
            &b"baggage"[..],
            &b"k8s.cluster.name=c1,k8s.namespace.name=default,service.name=echo"[..],
        ),
        HeaderField::new(
            &b"traceparent"[..],
            &b"00-0000000000000000000000000000abcd-00000000000000ef-00"[..],
        ),
        HeaderField::new(&b"authorization"[..], &b"secret"[..]),
    ]
}

#[test]
fn encoder_and_decoder_stay_in_step() {
    let mut e = Encoder::new(4096);
    let mut d = Decoder::new();
    let mut sizes = Vec::new();
    for n in 0..50 {
        let fields = hbone_fields(n);
        let mut block = Vec::new();
        e.encode(&fields, &mut block);
        sizes.push(block.len());
        let out = decode(&mut d, &Bytes::from(block));
        assert_eq!(out, fields);
        assert_eq!(d.table, e.table, "tables diverged at block {n}");
    }
    // Repeated headers come from the dynamic table: later blocks are much smaller.
    assert!(sizes[10] * 3 < sizes[0], "{sizes:?}");
    // Sensitive values never enter the table.
    assert!(!e.table.entries().any(|(n, _)| &n[..] == b"authorization"));
}

#[test]
fn encoder_emits_size_updates() {
    let mut e = Encoder::new(4096);
    let mut d = Decoder::new();
    let mut block = Vec::new();
    e.encode(&hbone_fields(1), &mut block);
    decode(&mut d, &Bytes::from(block));
    assert!(d.table.len() > 0);
    // The peer shrinks to 0 then grows to 1000 before our next block: both are signalled.
    e.set_peer_limit(0);
    e.set_peer_limit(1000);
    d.set_limit(1000);
    let mut block = Vec::new();
    e.encode(&hbone_fields(2), &mut block);
    assert_eq!(&block[..3], &[0x20, 0x3f, 0xc9]);
    let _ = decode(&mut d, &Bytes::from(block));
    assert_eq!(d.table.max_size(), 1000);
    assert_eq!(d.table, e.table);
    // A cap below 4096 is announced in the first block.
    let mut small = Encoder::new(100);
    let mut block = Vec::new();
    small.encode(&[HeaderField::new(&b"a"[..], &b"b"[..])], &mut block);
    assert_eq!(&block[..2], &[0x3f, 0x45]);
}

#[test]
fn decoder_enforces_its_limit() {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    // Update to 4097 > 4096.
    assert_eq!(
        d.decode(&hex("3fe21f"), &mut out, usize::MAX),
        Err(HpackError::SizeUpdateTooLarge(4097))
    );
    // Our SETTINGS_HEADER_TABLE_SIZE 0 was acknowledged: the next block must start with
    // an update.
    d.set_limit(0);
    assert_eq!(
        d.decode(&hex("82"), &mut out, usize::MAX),
        Err(HpackError::MissingSizeUpdate)
    );
    out.clear();
    assert!(d.decode(&hex("2082"), &mut out, usize::MAX).unwrap());
    assert_eq!(d.table.max_size(), 0);
    // Size updates only at the start of a block.
    assert_eq!(
        d.decode(&hex("8220"), &mut out, usize::MAX),
        Err(HpackError::LateSizeUpdate)
    );
}

#[test]
fn decoder_errors() {
    let cases: [(&str, HpackError); 7] = [
        ("80", HpackError::BadIndex(0)),
        ("be", HpackError::BadIndex(62)),
        ("ff80808080", HpackError::Truncated),
        ("ffffffffff0f", HpackError::IntegerOverflow),
        ("4005616263", HpackError::Truncated),
        ("400161", HpackError::Truncated),
        (
            "4001618100",
            HpackError::Huffman(super::huffman::HuffmanError::BadPadding),
        ),
    ];
    for (block, err) in cases {
        let mut d = Decoder::new();
        assert_eq!(
            d.decode(&hex(block), &mut Vec::new(), usize::MAX),
            Err(err),
            "{block}"
        );
    }
}

#[test]
fn literals_are_slices_of_the_block() {
    let block = hex("400a637573746f6d2d6b65790c637573746f6d2d76616c7565");
    let mut d = Decoder::new();
    let f = decode(&mut d, &block);
    let inside = |b: &Bytes| {
        let r = block.as_ptr() as usize..block.as_ptr() as usize + block.len();
        r.contains(&(b.as_ptr() as usize))
    };
    assert!(inside(&f[0].name) && inside(&f[0].value));
    // The table holds copies.
    let (n, _) = d.table.entries().next().unwrap();
    assert!(!inside(n));
}

#[test]
fn oversized_lists_stop_growing_but_keep_the_table_in_step() {
    let mut e = Encoder::new(4096);
    let mut d = Decoder::new();
    let big = HeaderField::new(&b"x-a"[..], Bytes::from(vec![b'v'; 1000]));
    // One insertion, then many references to it: a small block, a huge list.
    let mut block = Vec::new();
    e.encode(&[big.clone(), big.clone(), big.clone(), big], &mut block);
    let mut out = Vec::new();
    assert!(!d.decode(&Bytes::from(block), &mut out, 2_500).unwrap());
    assert_eq!(out.len(), 2);
    assert_eq!(d.table, e.table);
}
