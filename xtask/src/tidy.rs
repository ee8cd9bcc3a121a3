//! Checks xtask's documents against their sources with `cargo test`:
//! docs/configuration.md must document every field of the config schema.
//! (Module headers and the code map are checked by tests/tests/tidy.rs.)

use std::fs;

use crate::cmd;

/// Field names declared in a .proto file (`type name = N;` lines).
fn proto_fields(proto: &str) -> Vec<&str> {
    proto
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && l.ends_with(';') && l.contains(" = "))
        .filter_map(|l| {
            let (decl, _) = l.split_once(" = ")?;
            let words: Vec<&str> = decl.split_whitespace().collect();
            // Enum values are a single word; fields are "[optional|repeated] type name".
            (words.len() >= 2).then(|| words[words.len() - 1])
        })
        .collect()
}

#[test]
fn configuration_reference_covers_every_proto_field() {
    let root = cmd::repo_root();
    let proto = fs::read_to_string(root.join("gateway/proto/tollgate/config/v1/config.proto")).unwrap();
    let doc = fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let fields = proto_fields(&proto);
    assert!(fields.contains(&"max_request_header_bytes") && fields.contains(&"lb_policy"));
    let undocumented: Vec<&str> = fields
        .into_iter()
        .filter(|f| !doc.contains(&format!("`{f}`")) && !doc.contains(&format!(".{f}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/configuration.md lacks config fields: {undocumented:?}"
    );
}
