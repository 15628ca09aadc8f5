//! On-disk framing of WAL segments and records (see DESIGN.md).
//!
//! Segment = 16-byte header followed by records, back to back:
//!
//! ```text
//! header: magic "SKNWAL\0" (7) | version u8 (1) | first_seq u64 LE (8)
//! record: magic u32 | body_len u32 | crc32 u32 | body
//! body:   seq u64 | tenant_len u8 | tenant bytes | payload bytes
//! ```
//!
//! All integers are little-endian. The CRC (CRC-32/IEEE, `crc32fast`) covers
//! `body_len` and the body, so a damaged length that still lands inside the
//! file is caught too.

pub(super) const SEGMENT_MAGIC: &[u8; 7] = b"SKNWAL\0";
pub(super) const FORMAT_VERSION: u8 = 1;
pub(super) const SEGMENT_HEADER_LEN: usize = 16;

/// "SKR1" when read as bytes; lets replay tell zero-filled or foreign bytes
/// from a record start without computing a checksum.
pub(super) const RECORD_MAGIC: [u8; 4] = *b"SKR1";
pub(super) const RECORD_HEADER_LEN: usize = 12;
const BODY_FIXED_LEN: usize = 9;

/// Longest tenant name accepted (it is stored behind a one-byte length).
pub const MAX_TENANT_LEN: usize = 255;
/// Largest payload accepted per record.
pub const MAX_PAYLOAD_LEN: usize = 256 << 20;
const MAX_BODY_LEN: usize = BODY_FIXED_LEN + MAX_TENANT_LEN + MAX_PAYLOAD_LEN;

pub(super) fn segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..7].copy_from_slice(SEGMENT_MAGIC);
    h[7] = FORMAT_VERSION;
    h[8..].copy_from_slice(&first_seq.to_le_bytes());
    h
}

/// Returns the first seq stored in a segment header.
pub(super) fn parse_segment_header(data: &[u8]) -> Result<u64, String> {
    if data.len() < SEGMENT_HEADER_LEN {
        return Err(format!(
            "segment header is {} bytes, expected {SEGMENT_HEADER_LEN}",
            data.len()
        ));
    }
    if &data[..7] != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    if data[7] != FORMAT_VERSION {
        return Err(format!("unsupported segment format version {}", data[7]));
    }
    Ok(le_u64(&data[8..16]))
}

/// Appends one framed record to `buf`. Sizes must already be validated
/// against [`MAX_TENANT_LEN`] / [`MAX_PAYLOAD_LEN`], which keeps the casts
/// below lossless.
pub(super) fn encode_record(buf: &mut Vec<u8>, seq: u64, tenant: &[u8], payload: &[u8]) {
    debug_assert!(tenant.len() <= MAX_TENANT_LEN && payload.len() <= MAX_PAYLOAD_LEN);
    let body_len = (BODY_FIXED_LEN + tenant.len() + payload.len()) as u32;
    let len_bytes = body_len.to_le_bytes();
    let seq_bytes = seq.to_le_bytes();
    let tenant_len = [tenant.len() as u8];

    // Checksum the source slices directly: one pass over the payload for the
    // CRC and one for the copy, no re-reading of `buf`.
    let mut h = crc32fast::Hasher::new();
    h.update(&len_bytes);
    h.update(&seq_bytes);
    h.update(&tenant_len);
    h.update(tenant);
    h.update(payload);

    buf.reserve(RECORD_HEADER_LEN + body_len as usize);
    buf.extend_from_slice(&RECORD_MAGIC);
    buf.extend_from_slice(&len_bytes);
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.extend_from_slice(&seq_bytes);
    buf.extend_from_slice(&tenant_len);
    buf.extend_from_slice(tenant);
    buf.extend_from_slice(payload);
}

pub(super) fn encoded_len(tenant: &[u8], payload: &[u8]) -> usize {
    RECORD_HEADER_LEN + BODY_FIXED_LEN + tenant.len() + payload.len()
}

#[derive(Debug)]
pub(super) struct RawRecord<'a> {
    pub seq: u64,
    pub tenant: &'a str,
    pub payload: &'a [u8],
    /// Total framed length, header included.
    pub len: usize,
}

#[derive(Debug)]
pub(super) enum DecodeError {
    /// Incomplete or checksum-failing bytes: what an interrupted write
    /// leaves behind (or media damage).
    Torn(String),
    /// The checksum matched but the content is impossible: never a crash
    /// artefact, always an error.
    Invalid(String),
}

/// Decodes the record starting at `off`. `Ok(None)` means `off` is exactly
/// the end of `data`.
pub(super) fn decode_record(data: &[u8], off: usize) -> Result<Option<RawRecord<'_>>, DecodeError> {
    let rest = &data[off..];
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() < RECORD_HEADER_LEN {
        return Err(DecodeError::Torn(format!(
            "{} trailing bytes, shorter than a record header",
            rest.len()
        )));
    }
    if rest[..4] != RECORD_MAGIC {
        return Err(DecodeError::Torn("bad record magic".into()));
    }
    let body_len = le_u32(&rest[4..8]) as usize;
    if !(BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return Err(DecodeError::Torn(format!("record length {body_len} out of range")));
    }
    let total = RECORD_HEADER_LEN + body_len;
    if rest.len() < total {
        return Err(DecodeError::Torn(format!(
            "record needs {total} bytes, only {} present",
            rest.len()
        )));
    }
    let stored_crc = le_u32(&rest[8..12]);
    let body = &rest[RECORD_HEADER_LEN..total];
    let mut h = crc32fast::Hasher::new();
    h.update(&rest[4..8]);
    h.update(body);
    let crc = h.finalize();
    if crc != stored_crc {
        return Err(DecodeError::Torn(format!(
            "checksum mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"
        )));
    }
    let seq = le_u64(&body[..8]);
    let tenant_len = body[8] as usize;
    let Some(tenant) = body.get(BODY_FIXED_LEN..BODY_FIXED_LEN + tenant_len) else {
        return Err(DecodeError::Invalid(format!(
            "tenant length {tenant_len} exceeds record body"
        )));
    };
    let tenant = std::str::from_utf8(tenant)
        .map_err(|e| DecodeError::Invalid(format!("tenant is not UTF-8: {e}")))?;
    Ok(Some(RawRecord { seq, tenant, payload: &body[BODY_FIXED_LEN + tenant_len..], len: total }))
}

/// After damage at `from`, looks for any later intact record. Finding one
/// means the damage is not simply an interrupted final write.
pub(super) fn find_intact_record_after(data: &[u8], from: usize) -> Option<(usize, u64)> {
    let mut off = from + 1;
    while off + RECORD_HEADER_LEN <= data.len() {
        if data[off..off + 4] == RECORD_MAGIC
            && let Ok(Some(r)) = decode_record(data, off)
        {
            return Some((off, r.seq));
        }
        off += 1;
    }
    None
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}
