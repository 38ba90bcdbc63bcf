//! The bus contract as the committed JSON Schemas state it (`schemas/`): every message a test
//! publishes or sees is checked against its schema, so the tests speak only the contract.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

/// The messages the helpdesk publishes (the others are the bridge's).
pub(crate) const INBOUND: &[&str] = &["ticket.opened", "ticket.resolved", "ticket.reply"];

/// Checks `body` against the committed schema of `message` (`schemas/<message>.schema.json`);
/// every violation, one per line. A message with no schema is itself a violation: the
/// contract names every routing key.
pub(crate) fn check_contract(message: &str, body: &Value) -> Result<(), String> {
    static VALIDATORS: OnceLock<HashMap<String, jsonschema::Validator>> = OnceLock::new();
    let validators = VALIDATORS.get_or_init(|| {
        // The root package's schemas/, next to this crate.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name()?.to_str()?.strip_suffix(".schema.json")?;
                let schema: Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let validator = jsonschema::draft202012::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                Some((name.to_string(), validator))
            })
            .collect()
    });
    let Some(validator) = validators.get(message) else {
        return Err(format!("no schema for {message:?} in schemas/"));
    };
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{e} (at {:?})", e.instance_path().to_string()))
        .collect();
    match errors.is_empty() {
        true => Ok(()),
        false => Err(errors.join("\n")),
    }
}
