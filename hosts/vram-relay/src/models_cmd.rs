//! `vram-relay models`: the models a node serves (MODEL_LIST), and the hint that `embed` and
//! `generate` give when a model name is unknown.

use rela_client::{Client, ClientError, ListedModel};
use rela_core::wire::ErrorCode;
use rela_core::wire::model_list::ModelKind;

use crate::ConnectArgs;
use crate::error::CliError;
use crate::util::outln;

/// What a listed model is for, as the CLI prints it.
fn kind_name(kind: ModelKind) -> String {
    match kind.name() {
        Some(n) => n.to_owned(),
        None => format!("kind {}", kind.0),
    }
}

/// Runs `vram-relay models`: one model per line (`NAME  KIND`), or a JSON array.
pub(crate) async fn run(conn: ConnectArgs, json: bool) -> Result<(), CliError> {
    let mut c = crate::commands::connect(&conn).await?;
    if !c.serves_models() {
        return Err(format!("{} serves no models (start it with --models DIR)", conn.addr).into());
    }
    let models = c.list_models().await.map_err(|e| format!("listing models failed: {e}"))?;
    if let Err(e) = c.close().await {
        eprintln!(
            "warning: {}: the session ended without a BYE exchange ({e}); the node frees it anyway",
            conn.addr
        );
    }
    if json {
        let list: Vec<_> =
            models.iter().map(|m| serde_json::json!({ "name": m.name, "kind": kind_name(m.kind) })).collect();
        outln!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if models.is_empty() {
        eprintln!("{} serves no models yet: its --models folder holds none it can load", conn.addr);
    }
    let width = models.iter().map(|m| m.name.len()).max().unwrap_or(0);
    for m in &models {
        outln!("{:width$}  {}", m.name, kind_name(m.kind));
    }
    Ok(())
}

/// For a load that failed with NO_SUCH_MODEL, the models the node does serve (of `kind`), as
/// text to append to the error; empty for any other failure or when the list cannot be read.
pub(crate) async fn unknown_model_hint(c: &mut Client, error: &ClientError, kind: ModelKind) -> String {
    if error.code() != Some(ErrorCode::NO_SUCH_MODEL) {
        return String::new();
    }
    match c.list_models().await {
        Ok(models) => hint(&models, kind),
        Err(_) => String::new(),
    }
}

fn hint(models: &[ListedModel], kind: ModelKind) -> String {
    let names: Vec<&str> = models.iter().filter(|m| m.kind == kind).map(|m| m.name.as_str()).collect();
    if names.is_empty() {
        format!("; this node serves no {} models", kind_name(kind))
    } else {
        format!("; this node serves: {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_only_models_of_the_kind() {
        let m = |name: &str, kind| ListedModel { name: name.into(), kind };
        let list =
            [m("a", ModelKind::EMBEDDING), m("lm", ModelKind::GENERATION), m("b", ModelKind::EMBEDDING)];
        assert_eq!(hint(&list, ModelKind::EMBEDDING), "; this node serves: a, b");
        assert_eq!(hint(&list, ModelKind::GENERATION), "; this node serves: lm");
        assert_eq!(hint(&list[..1], ModelKind::GENERATION), "; this node serves no generation models");
    }
}
