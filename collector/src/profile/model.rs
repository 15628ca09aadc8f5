//! The normalized form of a push: what every ingest format is parsed into, what the profile WAL
//! stores (protobuf-encoded, so replay never re-parses pprof, folded or multipart bodies) and what
//! the head applies.

use prost::Message;

use super::ProfileError;

/// Everything one push request carries. It is written to the WAL as one record, so a push is
/// stored whole or not at all.
#[derive(Clone, PartialEq, Message)]
pub struct Batch {
    #[prost(message, repeated, tag = "1")]
    pub profiles: Vec<Profile>,
}

/// One profile: samples sharing a time, series labels and a list of profile types (one value
/// per type per sample, like pprof's sample types).
#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    /// Profile type ids, `name:sample_type:sample_unit:period_type:period_unit`.
    #[prost(string, repeated, tag = "1")]
    pub profile_types: Vec<String>,
    /// Unix nanoseconds.
    #[prost(int64, tag = "2")]
    pub time_ns: i64,
    /// Labels of the whole profile (`service_name`, tags from the push).
    #[prost(message, repeated, tag = "3")]
    pub labels: Vec<Label>,
    /// Function names, indexed by `Sample::frames`.
    #[prost(string, repeated, tag = "4")]
    pub functions: Vec<String>,
    #[prost(message, repeated, tag = "5")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    /// Indexes into `Profile::functions`, root first.
    #[prost(uint32, repeated, tag = "1")]
    pub frames: Vec<u32>,
    /// One value per `Profile::profile_types`.
    #[prost(int64, repeated, tag = "2")]
    pub values: Vec<i64>,
    /// Labels of this sample only (`span_id`, `span_name`, `thread`, ...); they override
    /// profile labels of the same name.
    #[prost(message, repeated, tag = "3")]
    pub labels: Vec<Label>,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

impl Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Label { name: name.into(), value: value.into() }
    }
}

/// Deeper stacks keep their root-most frames: every stack then still lines up with its callers
/// in a flame graph, and tree recursion stays shallow.
pub const MAX_STACK_DEPTH: usize = 1024;

impl Batch {
    pub fn samples(&self) -> usize {
        self.profiles.iter().map(|p| p.samples.len()).sum()
    }

    pub fn decode_wal(payload: &[u8]) -> Result<Batch, ProfileError> {
        Batch::decode(payload).map_err(|e| ProfileError::Internal(format!("WAL record: {e}")))
    }
}

/// Builds a [`Profile`], interning function names.
#[derive(Default)]
pub struct ProfileBuilder {
    profile: Profile,
    index: std::collections::HashMap<String, u32>,
}

impl ProfileBuilder {
    pub fn new(profile_types: Vec<String>, time_ns: i64, labels: Vec<Label>) -> Self {
        ProfileBuilder {
            profile: Profile { profile_types, time_ns, labels, ..Default::default() },
            index: Default::default(),
        }
    }

    pub fn function(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.profile.functions.len() as u32;
        self.profile.functions.push(name.to_string());
        self.index.insert(name.to_string(), i);
        i
    }

    /// Adds a sample unless all its values are zero (nothing to show, nothing to sum).
    pub fn sample(&mut self, mut frames: Vec<u32>, values: Vec<i64>, labels: Vec<Label>) {
        if values.iter().all(|v| *v == 0) {
            return;
        }
        frames.truncate(MAX_STACK_DEPTH);
        self.profile.samples.push(Sample { frames, values, labels });
    }

    pub fn finish(self) -> Profile {
        self.profile
    }
}

/// A profile type id split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileType {
    pub name: String,
    pub sample_type: String,
    pub sample_unit: String,
    pub period_type: String,
    pub period_unit: String,
}

impl ProfileType {
    pub fn id(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}",
            self.name, self.sample_type, self.sample_unit, self.period_type, self.period_unit
        )
    }

    /// Parses `name:sample_type:sample_unit:period_type:period_unit`.
    pub fn parse(id: &str) -> Result<ProfileType, ProfileError> {
        let parts: Vec<&str> = id.split(':').collect();
        match parts.as_slice() {
            [name, st, su, pt, pu] if !name.is_empty() => Ok(ProfileType {
                name: name.to_string(),
                sample_type: st.to_string(),
                sample_unit: su.to_string(),
                period_type: pt.to_string(),
                period_unit: pu.to_string(),
            }),
            _ => Err(ProfileError::BadRequest(format!(
                "invalid profile type {id:?}: expected name:sample_type:sample_unit:period_type:period_unit"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_type_ids_round_trip_and_reject_wrong_arity() {
        let t = ProfileType::parse("process_cpu:cpu:nanoseconds:cpu:nanoseconds").unwrap();
        assert_eq!(t.name, "process_cpu");
        assert_eq!(t.id(), "process_cpu:cpu:nanoseconds:cpu:nanoseconds");
        assert_eq!(ProfileType::parse("memory:inuse_space:bytes::").unwrap().period_type, "");
        assert!(ProfileType::parse("process_cpu:cpu").is_err());
        assert!(ProfileType::parse(":a:b:c:d").is_err());
    }

    #[test]
    fn builder_interns_functions_and_drops_zero_samples() {
        let mut b = ProfileBuilder::new(vec!["t".into()], 1, vec![]);
        let (a, c) = (b.function("a"), b.function("c"));
        assert_eq!(b.function("a"), a);
        b.sample(vec![a, c], vec![5], vec![]);
        b.sample(vec![a], vec![0], vec![]);
        let p = b.finish();
        assert_eq!(p.functions, vec!["a", "c"]);
        assert_eq!(p.samples.len(), 1);
    }
}
