//! `multipart/form-data` (RFC 7578) over a body already read into memory (and bounded by the
//! ingest size limit), as Pyroscope's Go and Java agents send pprof: a `profile` field and an
//! optional `sample_type_config`.

use super::ProfileError;

#[derive(Debug)]
pub struct Part<'a> {
    pub name: String,
    pub data: &'a [u8],
}

fn bad(why: impl std::fmt::Display) -> ProfileError {
    ProfileError::Malformed(format!("multipart body: {why}"))
}

/// The `boundary` parameter of a multipart content type.
pub fn boundary(content_type: &str) -> Result<String, ProfileError> {
    content_type
        .split(';')
        .skip(1)
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or_else(|| bad("Content-Type has no valid boundary"))
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while i + needle.len() <= hay.len() {
        let j = i + hay[i..=hay.len() - needle.len()].iter().position(|b| *b == first)?;
        if hay[j..].starts_with(needle) {
            return Some(j);
        }
        i = j + 1;
    }
    None
}

/// The `name` of a `Content-Disposition: form-data; name="..."` header.
fn field_name(headers: &str) -> Option<String> {
    headers
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-disposition"))
        .and_then(|(_, v)| {
            v.split(';').filter_map(|p| p.trim().split_once('=')).find(|(k, _)| *k == "name")
        })
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
}

/// Splits a multipart body into its parts (in order; data borrowed from `body`).
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, ProfileError> {
    let delim = format!("--{boundary}");
    // Between parts the delimiter is preceded by CRLF, which belongs to it, not to the data.
    let inner = format!("\r\n--{boundary}");
    let mut pos = find(body, delim.as_bytes(), 0).ok_or_else(|| bad("no boundary found"))?;
    let mut parts = Vec::new();
    loop {
        pos += delim.len();
        if body[pos..].starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding, then the line break that ends the delimiter line.
        while body.get(pos).is_some_and(|b| *b == b' ' || *b == b'\t') {
            pos += 1;
        }
        if body[pos..].starts_with(b"\r\n") {
            pos += 2;
        } else {
            return Err(bad("delimiter line not followed by CRLF"));
        }
        let head_end = find(body, b"\r\n\r\n", pos).ok_or_else(|| bad("part without headers"))?;
        let headers = std::str::from_utf8(&body[pos..head_end])
            .map_err(|_| bad("part headers are not UTF-8"))?;
        let name = field_name(headers).ok_or_else(|| bad("part without a form-data name"))?;
        let data_start = head_end + 4;
        let data_end = find(body, inner.as_bytes(), data_start)
            .ok_or_else(|| bad(format!("part {name:?} is not terminated by the boundary")))?;
        parts.push(Part { name, data: &body[data_start..data_end] });
        pos = data_end + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"profile\"; filename=\"profile.pprof\"\r\nContent-Type: application/octet-stream\r\n\r\n\x00\x01\r\n--\r\n\r\n--XyZ\r\nContent-Disposition: form-data; name=\"sample_type_config\"\r\n\r\n{}\r\n--XyZ--\r\n";

    #[test]
    fn parts_keep_binary_data_including_crlf_and_dashes() {
        let parts = parse(BODY, &boundary("multipart/form-data; boundary=XyZ").unwrap()).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "profile");
        assert_eq!(parts[0].data, b"\x00\x01\r\n--\r\n");
        assert_eq!(parts[1].name, "sample_type_config");
        assert_eq!(parts[1].data, b"{}");
    }

    #[test]
    fn quoted_boundaries_are_accepted_and_missing_ones_rejected() {
        assert_eq!(boundary("multipart/form-data; boundary=\"a b\"").unwrap(), "a b");
        assert!(boundary("multipart/form-data").is_err());
    }

    #[test]
    fn truncated_bodies_are_malformed() {
        let cut = &BODY[..BODY.len() - 40];
        assert!(matches!(parse(cut, "XyZ"), Err(ProfileError::Malformed(_))));
        assert!(matches!(parse(b"nothing here", "XyZ"), Err(ProfileError::Malformed(_))));
    }
}
