//! HPACK (RFC 7541): a decoder with dynamic table and Huffman, and an encoder using the
//! static table, a dynamic table and Huffman, both with state that can be read out and
//! rebuilt (`export`).
//!
//! Owns: header block octets <-> header field lists, and the two dynamic tables. Must not
//! decide HTTP semantics (`message` does) or when a size change takes effect (`conn`
//! tells the decoder its limit once our SETTINGS is acknowledged, and the encoder the
//! peer's SETTINGS_HEADER_TABLE_SIZE).
//!
//! Zero copy: a decoded literal that is not Huffman coded is a `Bytes` slice of the block;
//! static entries are `Bytes::from_static`; dynamic entries are shared `Bytes` clones.
//! Entries inserted into a table are copied, so they never pin a large receive buffer.

use std::collections::VecDeque;

use bytes::Bytes;

use super::huffman;
use super::message::HeaderField;

/// Why a header block did not decode: a `COMPRESSION_ERROR` (RFC 9113 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("header block ends inside a field representation")]
    Truncated,
    #[error("HPACK integer too large")]
    IntegerOverflow,
    #[error("header table index {0} is not in the static or dynamic table")]
    BadIndex(usize),
    #[error("dynamic table size update to {0} above the SETTINGS_HEADER_TABLE_SIZE limit")]
    SizeUpdateTooLarge(usize),
    #[error("dynamic table size update after the first header field of a block")]
    LateSizeUpdate,
    #[error("header block does not start with the required dynamic table size update")]
    MissingSizeUpdate,
    #[error("bad Huffman string: {0}")]
    Huffman(#[from] huffman::HuffmanError),
}

/// An entry's size as RFC 7541 §4.1 counts it.
pub fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// A dynamic table (RFC 7541 §2.3.2): newest entry first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    entries: VecDeque<(Bytes, Bytes)>,
    size: usize,
    max_size: usize,
}

impl Table {
    pub fn new(max_size: usize) -> Table {
        Table {
            entries: VecDeque::new(),
            size: 0,
            max_size,
        }
    }

    /// Rebuilds a table from its entries (newest first); `None` if they do not fit.
    pub fn from_parts(entries: Vec<(Bytes, Bytes)>, max_size: usize) -> Option<Table> {
        let size = entries.iter().map(|(n, v)| entry_size(n, v)).sum();
        (size <= max_size).then(|| Table {
            entries: entries.into(),
            size,
            max_size,
        })
    }

    /// The entries, newest first.
    pub fn entries(&self) -> impl Iterator<Item = &(Bytes, Bytes)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// Entry `i` of the dynamic table (0 is HPACK index 62).
    fn get(&self, i: usize) -> Option<&(Bytes, Bytes)> {
        self.entries.get(i)
    }

    /// Inserts a copy of the entry, evicting old ones (§4.4); an entry larger than the
    /// table empties it.
    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let sz = entry_size(name, value);
        if sz > self.max_size {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - sz);
        self.entries
            .push_front((Bytes::copy_from_slice(name), Bytes::copy_from_slice(value)));
        self.size += sz;
    }

    fn set_max_size(&mut self, max: usize) {
        self.max_size = max;
        self.evict_to(max);
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            match self.entries.pop_back() {
                Some((n, v)) => self.size -= entry_size(&n, &v),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }
}

/// Decodes the peer's header blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoder {
    pub(crate) table: Table,
    /// The largest table size the peer may choose: our SETTINGS_HEADER_TABLE_SIZE (the
    /// larger of the acknowledged and any pending value).
    pub(crate) limit: usize,
    /// The limit fell below the table's size: the next block must start with an update.
    pub(crate) must_update: bool,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            table: Table::new(4096),
            limit: 4096,
            must_update: false,
        }
    }

    /// Sets the limit for size updates (called when our settings change or are acked).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
        if limit < self.table.max_size {
            self.must_update = true;
        }
    }

    /// Decodes one complete header block, appending its fields to `out` while their list
    /// size (RFC 9113 §6.5.2) stays within `max_list`. The whole block is always decoded
    /// (the table must follow the peer's); returns whether the list fitted.
    pub fn decode(
        &mut self,
        block: &Bytes,
        out: &mut Vec<HeaderField>,
        max_list: usize,
    ) -> Result<bool, HpackError> {
        let mut r = Reader { b: block, pos: 0 };
        let mut started = false;
        let mut list = 0usize;
        let mut push = |out: &mut Vec<HeaderField>, name: Bytes, value: Bytes| {
            list = list.saturating_add(entry_size(&name, &value));
            if list <= max_list {
                out.push(HeaderField { name, value });
            }
        };
        while let Some(first) = r.peek() {
            if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3).
                if started {
                    return Err(HpackError::LateSizeUpdate);
                }
                let size = r.int(5)?;
                if size > self.limit {
                    return Err(HpackError::SizeUpdateTooLarge(size));
                }
                self.table.set_max_size(size);
                self.must_update = false;
                continue;
            }
            if self.must_update {
                return Err(HpackError::MissingSizeUpdate);
            }
            started = true;
            if first & 0x80 != 0 {
                // Indexed field (§6.1).
                let idx = r.int(7)?;
                let (n, v) = self.lookup(idx)?;
                push(out, n, v);
            } else {
                // Literal: with incremental indexing (01), never indexed (0001), without
                // indexing (0000) (§6.2).
                let (prefix, index) = if first & 0x40 != 0 {
                    (6, true)
                } else {
                    (4, false)
                };
                let idx = r.int(prefix)?;
                let name = if idx == 0 {
                    r.string()?
                } else {
                    self.lookup(idx)?.0
                };
                let value = r.string()?;
                if index {
                    self.table.insert(&name, &value);
                }
                push(out, name, value);
            }
        }
        Ok(list <= max_list)
    }

    fn lookup(&self, idx: usize) -> Result<(Bytes, Bytes), HpackError> {
        match idx {
            0 => Err(HpackError::BadIndex(0)),
            1..=61 => {
                let (n, v) = STATIC[idx - 1];
                Ok((
                    Bytes::from_static(n.as_bytes()),
                    Bytes::from_static(v.as_bytes()),
                ))
            }
            _ => self
                .table
                .get(idx - 62)
                .cloned()
                .ok_or(HpackError::BadIndex(idx)),
        }
    }
}

/// Encodes our header blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoder {
    pub(crate) table: Table,
    /// Our own cap on the table (the peer may allow more).
    pub(crate) cap: usize,
    /// Size updates owed at the start of the next block: (smallest, final) (§4.2).
    pub(crate) pending: Option<(usize, usize)>,
}

impl Encoder {
    pub fn new(cap: usize) -> Encoder {
        // The table starts at 4096 (the peer's initial SETTINGS_HEADER_TABLE_SIZE); a
        // smaller cap is announced with a size update in the first block.
        let mut e = Encoder {
            table: Table::new(4096),
            cap,
            pending: None,
        };
        e.set_peer_limit(4096);
        e
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE changed (we ack it right away).
    pub fn set_peer_limit(&mut self, peer: u32) {
        let new = (peer as usize).min(self.cap);
        if new == self.table.max_size && self.pending.is_none() {
            return;
        }
        let min = match self.pending {
            Some((m, _)) => m.min(new),
            None => self.table.max_size.min(new),
        };
        self.pending = Some((min, new));
        self.table.set_max_size(min);
        self.table.set_max_size(new);
    }

    /// Appends the encoding of `fields` to `dst` as one header block.
    pub fn encode(&mut self, fields: &[HeaderField], dst: &mut Vec<u8>) {
        if let Some((min, fin)) = self.pending.take() {
            if min < fin {
                int(dst, 0x20, 5, min);
            }
            int(dst, 0x20, 5, fin);
        }
        for f in fields {
            self.encode_field(f, dst);
        }
    }

    fn encode_field(&mut self, f: &HeaderField, dst: &mut Vec<u8>) {
        let (n, v) = (&f.name[..], &f.value[..]);
        let mut name_idx = 0;
        for (i, &(sn, sv)) in STATIC.iter().enumerate() {
            if sn.as_bytes() == n {
                if sv.as_bytes() == v {
                    int(dst, 0x80, 7, i + 1);
                    return;
                }
                if name_idx == 0 {
                    name_idx = i + 1;
                }
            }
        }
        for (i, (dn, dv)) in self.table.entries().enumerate() {
            if &dn[..] == n {
                if &dv[..] == v {
                    int(dst, 0x80, 7, i + 62);
                    return;
                }
                if name_idx == 0 {
                    name_idx = i + 62;
                }
            }
        }
        let sensitive = matches!(
            n,
            b"authorization" | b"proxy-authorization" | b"cookie" | b"set-cookie"
        );
        if sensitive {
            int(dst, 0x10, 4, name_idx);
        } else if entry_size(n, v) <= self.table.max_size / 2 {
            int(dst, 0x40, 6, name_idx);
        } else {
            int(dst, 0x00, 4, name_idx);
        }
        if name_idx == 0 {
            string(dst, n);
        }
        string(dst, v);
        if !sensitive && entry_size(n, v) <= self.table.max_size / 2 {
            self.table.insert(n, v);
        }
    }
}

/// Appends an HPACK integer (§5.1) with `prefix` bits after the `first` octet's flags.
fn int(dst: &mut Vec<u8>, first: u8, prefix: u8, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        dst.push(first | value as u8);
        return;
    }
    dst.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        dst.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    dst.push(rest as u8);
}

/// Appends a string literal (§5.2), Huffman coded when that is shorter.
fn string(dst: &mut Vec<u8>, s: &[u8]) {
    let h = huffman::encoded_len(s);
    if h < s.len() {
        int(dst, 0x80, 7, h);
        huffman::encode(s, dst);
    } else {
        int(dst, 0x00, 7, s.len());
        dst.extend_from_slice(s);
    }
}

struct Reader<'a> {
    b: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn byte(&mut self) -> Result<u8, HpackError> {
        let v = self.peek().ok_or(HpackError::Truncated)?;
        self.pos += 1;
        Ok(v)
    }

    /// Reads an HPACK integer with a `prefix`-bit prefix; at most 2^32 - 1.
    fn int(&mut self, prefix: u8) -> Result<usize, HpackError> {
        let max = (1u64 << prefix) - 1;
        let mut v = u64::from(self.byte()?) & max;
        if v < max {
            return Ok(v as usize);
        }
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            v += u64::from(b & 0x7f) << shift;
            if v > u64::from(u32::MAX) {
                return Err(HpackError::IntegerOverflow);
            }
            if b & 0x80 == 0 {
                return usize::try_from(v).map_err(|_| HpackError::IntegerOverflow);
            }
            shift += 7;
            if shift > 28 {
                return Err(HpackError::IntegerOverflow);
            }
        }
    }

    fn string(&mut self) -> Result<Bytes, HpackError> {
        let huff = self.peek().ok_or(HpackError::Truncated)? & 0x80 != 0;
        let len = self.int(7)?;
        let end = self.pos.checked_add(len).ok_or(HpackError::Truncated)?;
        if end > self.b.len() {
            return Err(HpackError::Truncated);
        }
        let raw = self.b.slice(self.pos..end);
        self.pos = end;
        if huff {
            let mut out = Vec::new();
            huffman::decode(&raw, &mut out)?;
            Ok(Bytes::from(out))
        } else {
            Ok(raw)
        }
    }
}

/// The static table (RFC 7541 Appendix A); index 1 is element 0.
pub const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];
