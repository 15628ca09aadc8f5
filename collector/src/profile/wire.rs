//! A pass over the protobuf wire format before prost decodes it: prost materialises every
//! element of a repeated field eagerly, so a few bytes on the wire (an empty message is two)
//! become a struct of tens of bytes. [`scan`] walks a message with a small schema of the
//! repeated fields that allocate, adds up what decoding would allocate, and charges it to the
//! push's [`Budget`] — a hostile body is refused before a single struct exists.
#![deny(clippy::arithmetic_side_effects)]

use std::mem::size_of;

use super::ProfileError;
use super::limits::Budget;
use super::pprof::pb;

/// What decoding one field allocates.
#[derive(Clone, Copy)]
enum Kind {
    /// An embedded message (repeated or not) of this size, with its own fields.
    Message(usize, Schema),
    /// A repeated scalar, packed or not: this many bytes per element.
    Scalars(usize),
    /// A string or bytes field: its length, plus a `String`/`Vec` when repeated.
    Bytes,
}

/// The fields of a message that allocate; others (singular scalars, unknown fields) cost
/// nothing beyond the message itself.
type Schema = fn(u32) -> Option<Kind>;

fn pprof_profile(tag: u32) -> Option<Kind> {
    Some(match tag {
        1 | 11 => Kind::Message(size_of::<pb::ValueType>(), none),
        2 => Kind::Message(size_of::<pb::Sample>(), pprof_sample),
        4 => Kind::Message(size_of::<pb::Location>(), pprof_location),
        5 => Kind::Message(size_of::<pb::Function>(), none),
        6 => Kind::Bytes,
        _ => return None,
    })
}

fn pprof_sample(tag: u32) -> Option<Kind> {
    Some(match tag {
        1 | 2 => Kind::Scalars(size_of::<u64>()),
        3 => Kind::Message(size_of::<pb::Label>(), none),
        _ => return None,
    })
}

fn pprof_location(tag: u32) -> Option<Kind> {
    (tag == 4).then_some(Kind::Message(size_of::<pb::Line>(), none))
}

/// Sizes of the `push.v1` structs prost generates (the API layer owns them; its tests check
/// these): `PushRequest` and `RawProfileSeries` are one and two `Vec`s, `LabelPair` and
/// `RawSample` two strings / bytes.
pub const PUSH_REQUEST_SIZE: usize = size_of::<Vec<u8>>();
pub const RAW_PROFILE_SERIES_SIZE: usize = size_of::<[Vec<u8>; 2]>();
pub const LABEL_PAIR_SIZE: usize = size_of::<[String; 2]>();
pub const RAW_SAMPLE_SIZE: usize = size_of::<(Vec<u8>, String)>();

fn push_request(tag: u32) -> Option<Kind> {
    (tag == 1).then_some(Kind::Message(RAW_PROFILE_SERIES_SIZE, push_series))
}

fn push_series(tag: u32) -> Option<Kind> {
    Some(match tag {
        1 => Kind::Message(LABEL_PAIR_SIZE, label_pair),
        2 => Kind::Message(RAW_SAMPLE_SIZE, raw_sample),
        _ => return None,
    })
}

fn label_pair(tag: u32) -> Option<Kind> {
    matches!(tag, 1 | 2).then_some(Kind::Bytes)
}

fn raw_sample(tag: u32) -> Option<Kind> {
    matches!(tag, 1 | 2).then_some(Kind::Bytes)
}

fn none(_: u32) -> Option<Kind> {
    None
}

/// The messages this module knows.
#[derive(Debug, Clone, Copy)]
pub enum Message {
    /// `perftools.profiles.Profile`.
    Pprof,
    /// `push.v1.PushRequest`.
    PushRequest,
}

/// Charges `budget` with what prost would allocate decoding `buf` as `msg`, and returns that
/// amount (to [`Budget::release`] once the decoded message is dropped). Malformed wire data is
/// an error here already.
pub fn scan(buf: &[u8], msg: Message, budget: &mut Budget) -> Result<usize, ProfileError> {
    let (size, schema): (usize, Schema) = match msg {
        Message::Pprof => (size_of::<pb::Profile>(), pprof_profile),
        Message::PushRequest => (PUSH_REQUEST_SIZE, push_request),
    };
    let mut cost = Cost { total: 0, budget };
    cost.add(size)?;
    walk(buf, schema, &mut cost, 0)?;
    Ok(cost.total)
}

struct Cost<'a> {
    total: usize,
    budget: &'a mut Budget,
}

impl Cost<'_> {
    fn add(&mut self, n: usize) -> Result<(), ProfileError> {
        self.budget.charge(n)?;
        self.total = self.total.saturating_add(n);
        Ok(())
    }
}

/// Our schemas are three levels deep; anything deeper is not one of them.
const MAX_DEPTH: usize = 8;

fn malformed(why: &str) -> ProfileError {
    ProfileError::Malformed(format!("protobuf: {why}"))
}

/// Reads a varint at `*pos`, advancing it.
fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, ProfileError> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or_else(|| malformed("truncated varint"))?;
        *pos = pos.saturating_add(1);
        v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(malformed("varint longer than 10 bytes"))
}

/// `len` bytes from `*pos`, advancing past them.
fn take<'a>(buf: &'a [u8], pos: &mut usize, len: u64) -> Result<&'a [u8], ProfileError> {
    let len = usize::try_from(len).map_err(|_| malformed("length out of range"))?;
    let end = pos
        .checked_add(len)
        .filter(|e| *e <= buf.len())
        .ok_or_else(|| malformed("truncated field"))?;
    let out = buf.get(*pos..end).ok_or_else(|| malformed("truncated field"))?;
    *pos = end;
    Ok(out)
}

fn walk(buf: &[u8], schema: Schema, cost: &mut Cost<'_>, depth: usize) -> Result<(), ProfileError> {
    if depth > MAX_DEPTH {
        return Err(malformed("messages nested too deeply"));
    }
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let tag = u32::try_from(key >> 3).map_err(|_| malformed("field number out of range"))?;
        let wire_type = key & 7;
        let kind = schema(tag);
        match wire_type {
            0 => {
                varint(buf, &mut pos)?;
                if let Some(Kind::Scalars(n)) = kind {
                    cost.add(n)?;
                }
            }
            1 | 5 => {
                take(buf, &mut pos, if wire_type == 1 { 8 } else { 4 })?;
                if let Some(Kind::Scalars(n)) = kind {
                    cost.add(n)?;
                }
            }
            2 => {
                let len = varint(buf, &mut pos)?;
                let data = take(buf, &mut pos, len)?;
                match kind {
                    Some(Kind::Message(size, sub)) => {
                        cost.add(size)?;
                        walk(data, sub, cost, depth.saturating_add(1))?;
                    }
                    Some(Kind::Scalars(n)) => {
                        // Packed: one element per varint, i.e. per byte without the high bit.
                        let elements = data.iter().filter(|b| **b & 0x80 == 0).count();
                        cost.add(elements.saturating_mul(n))?;
                    }
                    Some(Kind::Bytes) => {
                        cost.add(size_of::<String>().saturating_add(data.len()))?
                    }
                    None => {}
                }
            }
            _ => return Err(malformed("unsupported wire type")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::arithmetic_side_effects)]
    use super::*;
    use prost::Message as _;

    fn budget(bytes: usize) -> Budget {
        Budget::new(bytes, 1)
    }

    #[test]
    fn empty_repeated_messages_are_refused_before_decoding() {
        // 64 KiB of empty samples: two wire bytes each, a 72-byte struct each decoded.
        let body: Vec<u8> = std::iter::repeat_n([0x12u8, 0x00], 32 * 1024).flatten().collect();
        let mut b = budget(1 << 20);
        let e = scan(&body, Message::Pprof, &mut b).unwrap_err();
        assert!(matches!(e, ProfileError::TooComplex { .. }), "{e}");
        // The same samples decode fine when the budget covers them.
        let mut b = budget(64 << 20);
        let cost = scan(&body, Message::Pprof, &mut b).unwrap();
        assert!(cost >= 32 * 1024 * size_of::<pb::Sample>());
    }

    #[test]
    fn estimate_covers_what_prost_allocates_for_a_realistic_profile() {
        let p = crate::profile::pprof::tests::cpu_profile(0).encode_to_vec();
        let mut b = budget(1 << 20);
        let cost = scan(&p, Message::Pprof, &mut b).unwrap();
        assert!(cost > size_of::<pb::Profile>() + 4 * size_of::<pb::Location>());
        b.release(cost);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn packed_and_unpacked_scalars_count_per_element() {
        // Sample { location_id: [1, 2, 300] } packed, then one unpacked value.
        let sample = [0x0a, 0x04, 0x01, 0x02, 0xac, 0x02, 0x10, 0x05];
        let mut body = vec![0x12, sample.len() as u8];
        body.extend_from_slice(&sample);
        let mut b = budget(1 << 20);
        let cost = scan(&body, Message::Pprof, &mut b).unwrap();
        assert_eq!(cost, size_of::<pb::Profile>() + size_of::<pb::Sample>() + 4 * 8);
    }

    #[test]
    fn truncated_and_garbage_wire_data_is_malformed() {
        let mut b = budget(1 << 20);
        for bad in [&[0x12u8, 0x05, 0x00][..], &[0xff; 11][..], &[0x0f][..]] {
            assert!(matches!(scan(bad, Message::Pprof, &mut b), Err(ProfileError::Malformed(_))));
        }
    }

    #[test]
    fn push_requests_with_many_empty_series_are_refused() {
        let body: Vec<u8> = std::iter::repeat_n([0x0au8, 0x00], 32 * 1024).flatten().collect();
        let mut b = budget(1 << 20);
        assert!(matches!(
            scan(&body, Message::PushRequest, &mut b),
            Err(ProfileError::TooComplex { .. })
        ));
    }
}
