//! The pprof wire format (`perftools.profiles.Profile`, github.com/google/pprof
//! proto/profile.proto) as prost messages, and a builder that interns strings, functions and
//! locations. Public so that receivers (tests, the collector) can decode what is sent.

use std::collections::HashMap;

/// A profile: samples over a set of locations, with a shared string table (index 0 is "").
#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
    #[prost(int64, tag = "15")]
    pub doc_url: i64,
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ValueType {
    /// String table index.
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per `Profile.sample_type`.
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// Innermost (inlined) function first; the last entry is the caller they were inlined into.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
    #[prost(int64, tag = "3")]
    pub column: i64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

impl Profile {
    /// A string from the table (empty when out of range).
    pub fn str(&self, i: i64) -> &str {
        usize::try_from(i).ok().and_then(|i| self.string_table.get(i)).map_or("", String::as_str)
    }

    /// A sample's string label, if present.
    pub fn label<'a>(&'a self, s: &Sample, key: &str) -> Option<&'a str> {
        s.label.iter().find(|l| self.str(l.key) == key).map(|l| self.str(l.str))
    }

    /// Function names of a sample, leaf first (inlined functions included).
    pub fn stack(&self, s: &Sample) -> Vec<&str> {
        let locs: HashMap<u64, &Location> = self.location.iter().map(|l| (l.id, l)).collect();
        let funcs: HashMap<u64, &Function> = self.function.iter().map(|f| (f.id, f)).collect();
        s.location_id
            .iter()
            .filter_map(|id| locs.get(id))
            .flat_map(|l| l.line.iter())
            .filter_map(|line| funcs.get(&line.function_id))
            .map(|f| self.str(f.name))
            .collect()
    }
}

/// Interns strings, functions and locations while samples are added.
#[derive(Default)]
pub(super) struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64), u64>,
}

impl Builder {
    pub fn new() -> Builder {
        let mut b = Builder::default();
        b.string("");
        b
    }

    pub fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    pub fn value_type(&mut self, ty: &str, unit: &str) -> ValueType {
        ValueType { r#type: self.string(ty), unit: self.string(unit) }
    }

    pub fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (self.string(name), self.string(file));
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        self.profile.function.push(Function {
            id,
            name: key.0,
            system_name: key.0,
            filename: key.1,
            start_line: 0,
        });
        self.functions.insert(key, id);
        id
    }

    /// Adds a location (ids are 1-based, in insertion order); `lines` innermost first.
    pub fn location(&mut self, mapping_id: u64, address: u64, lines: Vec<Line>) -> u64 {
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            mapping_id,
            address,
            line: lines,
            is_folded: false,
        });
        id
    }

    pub fn mapping(&mut self, mut m: Mapping) -> u64 {
        m.id = self.profile.mapping.len() as u64 + 1;
        let id = m.id;
        self.profile.mapping.push(m);
        id
    }

    pub fn label(&mut self, key: &str, value: &str) -> Label {
        Label { key: self.string(key), str: self.string(value), num: 0, num_unit: 0 }
    }

    pub fn profile_mut(&mut self) -> &mut Profile {
        &mut self.profile
    }

    pub fn finish(self) -> Profile {
        self.profile
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_profile_round_trips_through_the_wire_format() {
        let mut b = Builder::new();
        let cpu = b.value_type("cpu", "nanoseconds");
        let count = b.value_type("samples", "count");
        let filename = b.string("/bin/app");
        let m = b.mapping(Mapping {
            memory_start: 0x1000,
            memory_limit: 0x2000,
            filename,
            has_functions: true,
            ..Default::default()
        });
        let outer = b.function("app::main", "main.rs");
        let inner = b.function("app::work", "work.rs");
        assert_eq!(b.function("app::work", "work.rs"), inner, "functions are interned");
        let leaf = b.location(
            m,
            0x1234,
            vec![
                Line { function_id: inner, line: 7, column: 0 },
                Line { function_id: outer, line: 3, column: 0 },
            ],
        );
        let root = b.location(m, 0x1100, vec![Line { function_id: outer, line: 1, column: 0 }]);
        let labels = vec![b.label("span_id", "00f067aa0ba902b7"), b.label("service_name", "svc")];
        let p = b.profile_mut();
        p.sample_type = vec![cpu, count];
        p.period_type = Some(cpu);
        p.period = 10_101_010;
        p.time_nanos = 1;
        p.duration_nanos = 2;
        p.sample.push(Sample {
            location_id: vec![leaf, root],
            value: vec![20_202_020, 2],
            label: labels,
        });
        let p = b.finish();
        assert_eq!(p.string_table[0], "");
        let bytes = p.encode_to_vec();
        let back = Profile::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(back, p);
        let s = &back.sample[0];
        assert_eq!(back.stack(s), vec!["app::work", "app::main", "app::main"]);
        assert_eq!(back.label(s, "span_id"), Some("00f067aa0ba902b7"));
        assert_eq!(back.label(s, "missing"), None);
        assert_eq!(back.str(back.sample_type[0].r#type), "cpu");
        // Field numbers are the spec's: string_table is field 6 (tag 0x32), length-delimited.
        assert!(bytes.windows(2).any(|w| w == [0x32, 0x00]), "the empty string 0 is encoded");
    }
}
