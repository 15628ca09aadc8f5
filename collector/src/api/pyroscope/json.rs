//! protojson details serde does not do by itself, used by the generated messages (see
//! `build.rs`): 64-bit integers are written as strings and read from strings or numbers, and
//! enums are read from their names or numbers.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::{SerializeSeq, Serializer};

struct Int64Visitor;

impl<'de> Visitor<'de> for Int64Visitor {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a 64-bit integer as a number or a string")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v).map(Some).map_err(|_| E::custom(format!("{v} is out of range")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        if v.fract() == 0.0 && v.abs() < 9.2e18 {
            Ok(Some(v as i64))
        } else {
            Err(E::custom(format!("{v} is not an integer")))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        v.trim().parse().map(Some).map_err(|_| E::custom(format!("{v:?} is not an integer")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// An int64 field: number, string or null (the default, 0).
pub fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(d.deserialize_any(Int64Visitor)?.unwrap_or(0))
}

/// An `optional int64` field.
pub fn opt_int64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_any(Int64Visitor)
}

/// `optional types.v1.TimeSeriesAggregationType`: its name or number.
pub fn opt_aggregation<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    use super::proto::types::v1::TimeSeriesAggregationType;
    let v = serde_json::Value::deserialize(d)?;
    match &v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| de::Error::custom(format!("invalid aggregation {n}"))),
        serde_json::Value::String(s) => TimeSeriesAggregationType::from_str_name(s)
            .map(|a| Some(a as i32))
            .ok_or_else(|| de::Error::custom(format!("unknown aggregation {s:?}"))),
        other => Err(de::Error::custom(format!("invalid aggregation {other}"))),
    }
}

pub fn int64_str<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub fn int64_strs<S: Serializer>(v: &[i64], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for x in v {
        seq.serialize_element(&x.to_string())?;
    }
    seq.end()
}

#[cfg(test)]
mod tests {
    use super::super::proto::querier::v1::{FlameGraph, Level, SelectSeriesRequest};

    #[test]
    fn requests_accept_numbers_strings_and_both_field_spellings() {
        let r: SelectSeriesRequest = serde_json::from_str(
            r#"{"profile_typeID":"a:b:c:d:e","labelSelector":"{}","start":"1000","end":2000,
               "group_by":["service_name"],"step":15,"limit":"3","aggregation":"TIME_SERIES_AGGREGATION_TYPE_AVERAGE"}"#,
        )
        .unwrap();
        assert_eq!(r.profile_type_id, "a:b:c:d:e");
        assert_eq!((r.start, r.end, r.limit, r.aggregation), (1000, 2000, Some(3), Some(1)));
        assert_eq!(r.group_by, vec!["service_name"]);
        let r: SelectSeriesRequest =
            serde_json::from_str(r#"{"profileTypeID":"x","start":null}"#).unwrap();
        assert_eq!((r.profile_type_id.as_str(), r.start, r.limit), ("x", 0, None));
        assert!(serde_json::from_str::<SelectSeriesRequest>(r#"{"start":"soon"}"#).is_err());
    }

    #[test]
    fn responses_write_int64_as_strings_in_camel_case() {
        let fg = FlameGraph {
            names: vec!["total".into()],
            levels: vec![Level { values: vec![0, 5, 0, 0] }],
            total: 5,
            max_self: 0,
        };
        let v = serde_json::to_value(&fg).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"names":["total"],"levels":[{"values":["0","5","0","0"]}],"total":"5","maxSelf":"0"})
        );
    }
}
