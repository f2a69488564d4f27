//! Header lists as HTTP/2 messages (RFC 9113 §8): the field type, the checks that make a
//! request, response or trailer section well-formed, and conversions to and from `http`
//! types.
//!
//! Owns: what a decoded field list must look like. A malformed one is a stream error of
//! type PROTOCOL_ERROR (§8.1.1); `recv` turns the `&'static str` here into the RST_STREAM.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};

/// One header field: name (lowercase) and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    pub name: Bytes,
    pub value: Bytes,
}

impl HeaderField {
    pub fn new(name: impl Into<Bytes>, value: impl Into<Bytes>) -> HeaderField {
        HeaderField {
            name: name.into(),
            value: value.into(),
        }
    }

    /// The size RFC 9113 §6.5.2 counts for SETTINGS_MAX_HEADER_LIST_SIZE.
    pub fn list_size(&self) -> usize {
        self.name.len() + self.value.len() + 32
    }
}

/// A field list that does not convert to an `http` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("malformed HTTP/2 message from the peer: {0}")]
    Malformed(&'static str),
    #[error("header {name:?} is not valid for the http crate")]
    BadHeader { name: String },
}

/// The value of the first field named `name`.
pub fn field<'a>(fields: &'a [HeaderField], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|f| &f.name[..] == name.as_bytes())
        .map(|f| &f.value[..])
}

/// The fields of a request: pseudo-headers first. A CONNECT without `:protocol` carries
/// only `:method` and `:authority` (RFC 9113 §8.5), which is the HBONE form.
pub fn request_fields(req: &Request<()>) -> Vec<HeaderField> {
    let mut f = Vec::with_capacity(req.headers().len() + 4);
    f.push(HeaderField::new(
        Bytes::from_static(b":method"),
        Bytes::copy_from_slice(req.method().as_str().as_bytes()),
    ));
    let uri = req.uri();
    let authority = uri.authority().map(|a| a.as_str());
    if req.method() == Method::CONNECT {
        if let Some(a) = authority {
            f.push(HeaderField::new(
                Bytes::from_static(b":authority"),
                Bytes::copy_from_slice(a.as_bytes()),
            ));
        }
    } else {
        let scheme = uri.scheme_str().unwrap_or("https");
        f.push(HeaderField::new(
            Bytes::from_static(b":scheme"),
            Bytes::copy_from_slice(scheme.as_bytes()),
        ));
        if let Some(a) = authority {
            f.push(HeaderField::new(
                Bytes::from_static(b":authority"),
                Bytes::copy_from_slice(a.as_bytes()),
            ));
        }
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        f.push(HeaderField::new(
            Bytes::from_static(b":path"),
            Bytes::copy_from_slice(path.as_bytes()),
        ));
    }
    push_headers(&mut f, req.headers());
    f
}

/// The fields of a response head.
pub fn response_fields(status: u16, headers: &HeaderMap) -> Vec<HeaderField> {
    let mut f = Vec::with_capacity(headers.len() + 1);
    f.push(HeaderField::new(
        Bytes::from_static(b":status"),
        Bytes::from(status.to_string()),
    ));
    push_headers(&mut f, headers);
    f
}

fn push_headers(f: &mut Vec<HeaderField>, headers: &HeaderMap) {
    for (n, v) in headers {
        f.push(HeaderField::new(
            Bytes::copy_from_slice(n.as_str().as_bytes()),
            Bytes::copy_from_slice(v.as_bytes()),
        ));
    }
}

/// Converts a received request head (already checked by the codec) to an `http::Request`.
pub fn to_request(fields: &[HeaderField]) -> Result<Request<()>, MessageError> {
    check_request(fields).map_err(MessageError::Malformed)?;
    let pseudo = |n: &str| field(fields, n).and_then(|v| std::str::from_utf8(v).ok());
    let method = Method::from_bytes(field(fields, ":method").unwrap_or_default())
        .map_err(|_| MessageError::Malformed("bad :method"))?;
    let uri = match (pseudo(":scheme"), pseudo(":authority"), pseudo(":path")) {
        (None, Some(a), None) => a.parse::<Uri>(),
        (Some(s), Some(a), Some(p)) => format!("{s}://{a}{p}").parse(),
        (Some(_), None, Some(p)) => p.parse(),
        _ => return Err(MessageError::Malformed("bad request target")),
    }
    .map_err(|_| MessageError::Malformed("bad request target"))?;
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    fill_headers(req.headers_mut(), fields)?;
    Ok(req)
}

/// Converts a received response head to an `http::Response`.
pub fn to_response(fields: &[HeaderField]) -> Result<Response<()>, MessageError> {
    let status = check_response(fields).map_err(MessageError::Malformed)?;
    let mut resp = Response::new(());
    *resp.status_mut() =
        StatusCode::from_u16(status).map_err(|_| MessageError::Malformed("bad :status"))?;
    *resp.version_mut() = http::Version::HTTP_2;
    fill_headers(resp.headers_mut(), fields)?;
    Ok(resp)
}

fn fill_headers(map: &mut HeaderMap, fields: &[HeaderField]) -> Result<(), MessageError> {
    for f in fields.iter().filter(|f| !f.name.starts_with(b":")) {
        let bad = || MessageError::BadHeader {
            name: String::from_utf8_lossy(&f.name).into_owned(),
        };
        let n = HeaderName::from_bytes(&f.name).map_err(|_| bad())?;
        let v = HeaderValue::from_maybe_shared(f.value.clone()).map_err(|_| bad())?;
        map.append(n, v);
    }
    Ok(())
}

/// Checks a request head (§8.3.1); CONNECT per §8.5 (and RFC 8441 with `:protocol`).
pub(crate) fn check_request(fields: &[HeaderField]) -> Result<(), &'static str> {
    let mut seen = [false; 5];
    let pseudo = [":method", ":scheme", ":authority", ":path", ":protocol"];
    let mut method: &[u8] = b"";
    let mut path: &[u8] = b"";
    check_fields(fields, |name, value| {
        let i = pseudo
            .iter()
            .position(|p| p.as_bytes() == name)
            .ok_or("pseudo-header not allowed in a request")?;
        if seen[i] {
            return Err("duplicate pseudo-header");
        }
        seen[i] = true;
        match i {
            0 => method = value,
            3 => path = value,
            _ => {}
        }
        Ok(())
    })?;
    let [m, s, a, p, proto] = seen;
    if !m {
        return Err("request without :method");
    }
    if method == b"CONNECT" && !proto {
        if !a || s || p {
            return Err("CONNECT must carry :authority and no :scheme or :path");
        }
        return Ok(());
    }
    if !s || !p || path.is_empty() {
        return Err("request without :scheme or :path");
    }
    if proto && method != b"CONNECT" {
        return Err(":protocol outside an extended CONNECT");
    }
    Ok(())
}

/// Checks a response head (§8.3.2) and returns its status.
pub(crate) fn check_response(fields: &[HeaderField]) -> Result<u16, &'static str> {
    let mut status = None;
    check_fields(fields, |name, value| {
        if name != b":status" {
            return Err("pseudo-header not allowed in a response");
        }
        if status.is_some() {
            return Err("duplicate :status");
        }
        let parsed = match value {
            [a @ b'1'..=b'9', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
                u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
            }
            _ => return Err(":status is not three digits"),
        };
        status = Some(parsed);
        Ok(())
    })?;
    status.ok_or("response without :status")
}

/// Checks a trailer section: no pseudo-headers (§8.1).
pub(crate) fn check_trailers(fields: &[HeaderField]) -> Result<(), &'static str> {
    check_fields(fields, |_, _| Err("pseudo-header in trailers"))
}

/// The rules every field section follows (§8.2, §8.3): pseudo-headers first, names
/// lowercase tokens, no connection-specific fields, values without NUL/CR/LF or
/// surrounding whitespace.
fn check_fields<'a>(
    fields: &'a [HeaderField],
    mut on_pseudo: impl FnMut(&'a [u8], &'a [u8]) -> Result<(), &'static str>,
) -> Result<(), &'static str> {
    let mut regular = false;
    for f in fields {
        let (n, v) = (&f.name[..], &f.value[..]);
        if v.iter().any(|&c| c == 0 || c == b'\r' || c == b'\n') {
            return Err("header value contains NUL, CR or LF");
        }
        if matches!(v.first(), Some(b' ' | b'\t')) || matches!(v.last(), Some(b' ' | b'\t')) {
            return Err("header value starts or ends with whitespace");
        }
        if let Some(rest) = n.strip_prefix(b":") {
            if regular {
                return Err("pseudo-header after a regular header");
            }
            if rest.is_empty() {
                return Err("empty pseudo-header name");
            }
            on_pseudo(n, v)?;
            continue;
        }
        regular = true;
        if n.is_empty() || !n.iter().all(|&c| is_lower_tchar(c)) {
            return Err("header name empty, uppercase or not a token");
        }
        match n {
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding"
            | b"upgrade" => return Err("connection-specific header"),
            b"te" if v != b"trailers" => return Err("te other than trailers"),
            _ => {}
        }
    }
    Ok(())
}

fn is_lower_tchar(c: u8) -> bool {
    matches!(c,
        b'a'..=b'z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.'
        | b'^' | b'_' | b'`' | b'|' | b'~')
}
