//! Deduplicated stacks: a stack is stored once (per head part or block) under a stable 64-bit id
//! derived from its frames, and samples refer to it by that id. Because the id depends only on
//! the frames, the same stack has the same id in every block and after every restart, so merging
//! samples across blocks never needs to translate ids.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, ListArray, RecordBatch, StringArray, UInt64Array};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::ProfileError;

/// FNV-1a over the frames (each followed by a 0xff byte, which UTF-8 never contains, so frame
/// boundaries are part of the hash), then the splitmix64 finaliser to spread FNV's weak low
/// bits. Stable across releases and platforms: ids are persisted in blocks.
pub fn stack_id<'a>(frames: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in frames {
        for b in f.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Schema of a block's `stacks.parquet`: one row per stack, frames root first. Parquet's
/// dictionary encoding stores each function name once per column chunk.
pub fn stacks_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("stack_id", DataType::UInt64, false),
        Field::new(
            "frames",
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, false))),
            false,
        ),
    ]))
}

/// Stacks by id, function names interned. Append-only: readers holding a table never see a
/// stack change or disappear.
#[derive(Debug, Default)]
pub struct StackTable {
    functions: Vec<String>,
    index: HashMap<String, u32>,
    stacks: HashMap<u64, Box<[u32]>>,
}

impl StackTable {
    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.stacks.contains_key(&id)
    }

    /// Adds a stack under `id` (computed by the caller from the same frames) unless present.
    pub fn insert(&mut self, id: u64, frames: &[&str]) {
        if self.stacks.contains_key(&id) {
            return;
        }
        let ids = frames
            .iter()
            .map(|f| match self.index.get(*f) {
                Some(&i) => i,
                None => {
                    let i = self.functions.len() as u32;
                    self.functions.push(f.to_string());
                    self.index.insert(f.to_string(), i);
                    i
                }
            })
            .collect();
        self.stacks.insert(id, ids);
    }

    /// The frames of a stack, root first.
    pub fn frames(&self, id: u64) -> Option<Vec<String>> {
        let ids = self.stacks.get(&id)?;
        Some(ids.iter().map(|i| self.functions[*i as usize].clone()).collect())
    }

    /// The table as a batch sorted by id (`stacks_schema`).
    pub fn to_batch(&self) -> Result<RecordBatch, ProfileError> {
        let mut ids: Vec<u64> = self.stacks.keys().copied().collect();
        ids.sort_unstable();
        let mut offsets = Vec::with_capacity(ids.len() + 1);
        offsets.push(0i32);
        let mut names: Vec<&str> = Vec::new();
        for id in &ids {
            if let Some(frames) = self.stacks.get(id) {
                names.extend(frames.iter().map(|i| self.functions[*i as usize].as_str()));
            }
            let end = i32::try_from(names.len()).map_err(|_| {
                ProfileError::Internal("stack table too large for one batch".into())
            })?;
            offsets.push(end);
        }
        let values: ArrayRef = Arc::new(StringArray::from(names));
        let frames = ListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Utf8, false)),
            OffsetBuffer::new(offsets.into()),
            values,
            None,
        )?;
        Ok(RecordBatch::try_new(
            stacks_schema(),
            vec![Arc::new(UInt64Array::from(ids)), Arc::new(frames)],
        )?)
    }
}

/// Reads frames of the wanted stacks out of a `stacks.parquet` batch.
pub fn frames_from_batch(
    batch: &RecordBatch,
    wanted: &mut dyn FnMut(u64) -> bool,
    out: &mut HashMap<u64, Vec<String>>,
) -> Result<(), ProfileError> {
    use arrow::array::AsArray;
    let bad = || ProfileError::Internal("stacks file with an unexpected schema".into());
    let ids = batch.column_by_name("stack_id").ok_or_else(bad)?;
    let ids = ids.as_primitive_opt::<arrow::datatypes::UInt64Type>().ok_or_else(bad)?;
    let frames =
        batch.column_by_name("frames").ok_or_else(bad)?.as_list_opt::<i32>().ok_or_else(bad)?;
    let names = frames.values().as_string_opt::<i32>().ok_or_else(bad)?;
    for row in 0..batch.num_rows() {
        let id = ids.value(row);
        if !wanted(id) {
            continue;
        }
        let (start, end) =
            (frames.value_offsets()[row] as usize, frames.value_offsets()[row + 1] as usize);
        out.insert(id, (start..end).map(|i| names.value(i).to_string()).collect());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_frame_boundaries_and_are_stable() {
        assert_ne!(stack_id(["ab", "c"]), stack_id(["a", "bc"]));
        assert_ne!(stack_id(["a", "b"]), stack_id(["b", "a"]));
        // Persisted in blocks: this value must never change.
        assert_eq!(stack_id(["main", "work"]), 0x03ed_53f4_2756_0167);
    }

    #[test]
    fn tables_dedupe_names_and_round_trip_through_a_batch() {
        let mut t = StackTable::default();
        let a = ["main", "work", "leaf"];
        let b = ["main", "idle"];
        t.insert(stack_id(a), &a);
        t.insert(stack_id(b), &b);
        t.insert(stack_id(a), &a);
        assert_eq!(t.len(), 2);
        assert_eq!(t.functions.len(), 4);
        let batch = t.to_batch().unwrap();
        let mut out = HashMap::new();
        frames_from_batch(&batch, &mut |id| id == stack_id(b), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[&stack_id(b)], vec!["main", "idle"]);
        assert_eq!(t.frames(stack_id(a)).unwrap(), vec!["main", "work", "leaf"]);
    }
}
