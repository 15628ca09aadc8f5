//! Generates the Pyroscope API messages (querier.v1, types.v1, push.v1) and the pprof messages
//! from `proto/` without `protoc`: `protox` parses the files, `tonic-prost-build` emits prost
//! structs (no clients or servers: the Connect endpoints are plain axum handlers).
//!
//! The querier and types messages also derive serde for Connect's JSON encoding. protojson
//! writes 64-bit integers as strings and accepts numbers or strings, uses lowerCamelCase names
//! and accepts the proto field names too; the attributes below add exactly that.

const JSON: &str = "crate::api::pyroscope::json";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        ["querier/v1/querier.proto", "push/v1/push.proto", "perftools/profiles/profile.proto"],
        ["proto"],
    )?;
    let mut b = tonic_prost_build::configure().build_client(false).build_server(false);
    for pkg in [".querier.v1", ".types.v1"] {
        b = b.message_attribute(
            pkg,
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(rename_all = \"camelCase\", default)]",
        );
    }
    let requests = [
        "querier.v1.ProfileTypesRequest",
        "types.v1.LabelNamesRequest",
        "types.v1.LabelValuesRequest",
        "querier.v1.SelectMergeStacktracesRequest",
        "querier.v1.SelectMergeSpanProfileRequest",
        "querier.v1.SelectSeriesRequest",
    ];
    for r in requests {
        for f in ["start", "end"] {
            b = b.field_attribute(
                format!(".{r}.{f}"),
                format!("#[serde(deserialize_with = \"{JSON}::int64\")]"),
            );
        }
    }
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut add = |path: &str, attr: String| fields.push((format!(".{path}"), attr));
    for r in
        ["querier.v1.SelectMergeStacktracesRequest", "querier.v1.SelectMergeSpanProfileRequest"]
    {
        add(
            &format!("{r}.max_nodes"),
            format!("#[serde(deserialize_with = \"{JSON}::opt_int64\")]"),
        );
    }
    add(
        "querier.v1.SelectSeriesRequest.limit",
        format!("#[serde(deserialize_with = \"{JSON}::opt_int64\")]"),
    );
    add(
        "querier.v1.SelectSeriesRequest.aggregation",
        format!("#[serde(deserialize_with = \"{JSON}::opt_aggregation\")]"),
    );
    for p in [
        "querier.v1.FlameGraph.total",
        "querier.v1.FlameGraph.max_self",
        "types.v1.Point.timestamp",
    ] {
        add(p, format!("#[serde(serialize_with = \"{JSON}::int64_str\")]"));
    }
    add("querier.v1.Level.values", format!("#[serde(serialize_with = \"{JSON}::int64_strs\")]"));
    add("types.v1.ProfileType.ID", "#[serde(rename = \"ID\")]".into());
    for r in [
        "querier.v1.SelectMergeStacktracesRequest",
        "querier.v1.SelectMergeSpanProfileRequest",
        "querier.v1.SelectSeriesRequest",
    ] {
        add(
            &format!("{r}.profile_typeID"),
            "#[serde(rename = \"profileTypeID\", alias = \"profile_typeID\")]".into(),
        );
        for (field, camel) in [
            ("label_selector", "labelSelector"),
            ("max_nodes", "maxNodes"),
            ("span_selector", "spanSelector"),
            ("stack_trace_selector", "stackTraceSelector"),
            ("group_by", "groupBy"),
        ] {
            add(
                &format!("{r}.{field}"),
                format!("#[serde(rename = \"{camel}\", alias = \"{field}\")]"),
            );
        }
    }
    add("types.v1.StackTraceSelector.call_site", "#[serde(alias = \"call_site\")]".into());
    for (path, attr) in fields {
        b = b.field_attribute(path, attr);
    }
    b.compile_fds(fds)?;
    Ok(())
}
