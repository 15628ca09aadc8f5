//! The body of an internal answer that carries rows: `SKP1`, a little-endian u32 length, that
//! many bytes of JSON (what the rows need to be understood), then an Arrow IPC stream of the
//! rows (schema first, so an answer without rows still says its columns).

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ClusterError;

const MAGIC: &[u8; 4] = b"SKP1";
/// Largest JSON part accepted (block ids of one tenant of one replica, tag keys).
const MAX_JSON: usize = 64 << 20;

pub fn encode<M: Serialize>(
    meta: &M,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Bytes, ClusterError> {
    let json = serde_json::to_vec(meta).map_err(|e| ClusterError::Wire(e.to_string()))?;
    let len = u32::try_from(json.len()).map_err(|_| ClusterError::Wire("meta too large".into()))?;
    let mut out = BytesMut::with_capacity(8 + json.len());
    out.put_slice(MAGIC);
    out.put_u32_le(len);
    out.put_slice(&json);
    let mut w = out.writer();
    {
        let mut sw =
            StreamWriter::try_new(&mut w, schema).map_err(|e| ClusterError::Wire(e.to_string()))?;
        for b in batches {
            sw.write(b).map_err(|e| ClusterError::Wire(e.to_string()))?;
        }
        sw.finish().map_err(|e| ClusterError::Wire(e.to_string()))?;
    }
    Ok(w.into_inner().freeze())
}

pub fn decode<M: DeserializeOwned>(body: &[u8]) -> Result<(M, Vec<RecordBatch>), ClusterError> {
    let bad = |m: &str| ClusterError::Wire(m.to_string());
    let rest = body.strip_prefix(MAGIC.as_slice()).ok_or_else(|| bad("not a peer answer"))?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(|| bad("truncated"))?;
    let len = usize::try_from(u32::from_le_bytes(*len)).map_err(|_| bad("length"))?;
    if len > MAX_JSON || len > rest.len() {
        return Err(bad("truncated meta"));
    }
    let (json, ipc) = rest.split_at(len);
    let meta: M = serde_json::from_slice(json).map_err(|e| ClusterError::Wire(e.to_string()))?;
    let reader = StreamReader::try_new(ipc, None).map_err(|e| ClusterError::Wire(e.to_string()))?;
    let batches =
        reader.collect::<Result<Vec<_>, _>>().map_err(|e| ClusterError::Wire(e.to_string()))?;
    Ok((meta, batches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spanrows::{DedicatedColumns, span_schema};

    #[test]
    fn rows_and_meta_survive_the_round_trip_and_garbage_is_refused() {
        let schema = span_schema(&DedicatedColumns::default());
        let empty = RecordBatch::new_empty(schema.clone());
        let body = encode(&vec!["b1".to_string()], &schema, &[empty]).unwrap();
        let (meta, batches): (Vec<String>, _) = decode(&body).unwrap();
        assert_eq!(meta, vec!["b1"]);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].schema(), schema);
        for bad in [&b""[..], b"SKP1", b"SKP1\xff\xff\xff\xff{}", &body[..body.len() - 3]] {
            assert!(decode::<Vec<String>>(bad).is_err());
        }
    }
}
