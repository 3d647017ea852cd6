//! Checking a tool call's inputs against the tool's JSON Schema: the api does it before it
//! accepts a direct request (400), the tool's workflow before it runs the tool (a model's
//! arguments are checked there), with the same rules and messages.

use serde_json::Value;

/// The inputs as JSON, or why they are not.
pub fn parse_arguments(arguments: &str) -> Result<Value, String> {
    let text = if arguments.trim().is_empty() { "{}" } else { arguments };
    serde_json::from_str(text).map_err(|e| format!("the inputs are not JSON: {e}"))
}

/// `Ok` if `inputs` fit `schema`; otherwise every problem, each with where it is.
pub fn validate(schema: &Value, inputs: &Value) -> Result<(), String> {
    let validator = jsonschema::validator_for(schema).map_err(|e| format!("the tool's input schema is invalid: {e}"))?;
    let problems: Vec<String> = validator
        .iter_errors(inputs)
        .map(|error| {
            let at = error.instance_path().to_string();
            if at.is_empty() { error.to_string() } else { format!("{at}: {error}") }
        })
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(format!("invalid inputs: {}", problems.join("; "))) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inputs_are_checked_against_the_schema() {
        let schema = json!({"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]});
        assert!(validate(&schema, &json!({"expression": "1+1"})).is_ok());
        let err = validate(&schema, &json!({"expression": 5})).unwrap_err();
        assert!(err.contains("/expression"), "{err}");
        assert!(validate(&schema, &json!({})).unwrap_err().contains("required"));
        assert!(parse_arguments("{not json").is_err());
        assert_eq!(parse_arguments("").unwrap(), json!({}));
    }
}
