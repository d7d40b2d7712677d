//! Kafka's topic name rules (`Topic.validate`): 1-249 characters of ASCII alphanumerics,
//! '.', '_' and '-', and not "." or "..". Checked by the controller on create and by the
//! broker before auto-creating.

pub const MAX_TOPIC_NAME_CHARS: usize = 249;

/// Kafka's topic name rules.
pub fn validate(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Topic name is illegal, it can't be empty".into());
    }
    if name == "__cluster_metadata" {
        return Err("Topic name \"__cluster_metadata\" is reserved for the metadata log".into());
    }
    if name == "." || name == ".." {
        return Err("Topic name cannot be \".\" or \"..\"".into());
    }
    if name.len() > MAX_TOPIC_NAME_CHARS {
        return Err(format!(
            "Topic name is illegal, it can't be longer than {MAX_TOPIC_NAME_CHARS} characters, topic name: {name}"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
    {
        return Err(format!(
            "Topic name \"{name}\" is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}
