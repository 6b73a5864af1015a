//! `vram-relay generate`: text generation with a GGUF model on a node, printed as it arrives.

use rela_core::wire::model_list::ModelKind;
use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use rela_client::{GenerateEvent, GenerateOutcome, GenerateRequest};
use rela_core::wire::generate::{Prompt, Sampling};
use serde::Deserialize;

use crate::ConnectArgs;
use crate::error::CliError;

/// `vram-relay generate` arguments.
#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Model name on the node: a `.gguf` file in its --models DIR, without the extension.
    #[arg(long)]
    model: String,
    /// Render PROMPT as the user's message with the model's chat template.
    #[arg(long)]
    chat: bool,
    /// A system message before PROMPT (implies --chat).
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// A whole conversation instead of PROMPT: a JSON array of {"role": ..., "content": ...}
    /// objects (implies --chat; PROMPT, if given, is appended as the user's message).
    #[arg(long, value_name = "FILE")]
    messages: Option<PathBuf>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: u32,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// Nucleus sampling threshold in (0, 1] (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the node's random generator (same request and seed, same text).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop before this string (up to 4 times).
    #[arg(long = "stop", value_name = "TEXT")]
    stops: Vec<String>,
    /// Print one JSON object at the end: input_ids, generated_ids, text, finish_reason.
    #[arg(long)]
    json: bool,
    /// The prompt (the user's message with --chat).
    prompt: Option<String>,
}

/// One message of a `--messages` file.
#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: String,
}

/// The conversation to send, if the prompt is a chat.
fn conversation(args: &GenerateArgs) -> Result<Option<Vec<(String, String)>>, CliError> {
    if !(args.chat || args.system.is_some() || args.messages.is_some()) {
        return Ok(None);
    }
    let mut out = Vec::new();
    if let Some(system) = &args.system {
        out.push(("system".to_owned(), system.clone()));
    }
    if let Some(path) = &args.messages {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let messages: Vec<ChatMessage> = serde_json::from_str(&text).map_err(|e| {
            format!("{}: not a JSON array of {{\"role\", \"content\"}} objects: {e}", path.display())
        })?;
        out.extend(messages.into_iter().map(|m| (m.role, m.content)));
    }
    if let Some(p) = &args.prompt {
        out.push(("user".to_owned(), p.clone()));
    }
    Ok(Some(out))
}

/// Runs `vram-relay generate`.
pub(crate) async fn run(args: GenerateArgs) -> Result<(), CliError> {
    let chat = conversation(&args)?;
    if chat.is_none() && args.prompt.is_none() {
        return Err("give a PROMPT, or --messages FILE".to_owned().into());
    }
    let mut c = crate::commands::connect(&args.conn).await?;
    if !c.serves_models() {
        return Err(format!("{} serves no models (start it with --models DIR)", args.conn.addr).into());
    }
    let model = match c.model_load(&args.model).await {
        Ok(m) => m,
        Err(e) => {
            let hint = crate::models_cmd::unknown_model_hint(&mut c, &e, ModelKind::GENERATION).await;
            return Err(format!("{e}{hint}").into());
        }
    };
    let refs: Vec<(&str, &str)> = chat.iter().flatten().map(|(r, m)| (r.as_str(), m.as_str())).collect();
    let prompt = match &chat {
        Some(_) => Prompt::Messages(&refs),
        None => Prompt::Text(args.prompt.as_deref().unwrap_or_default()),
    };
    let stops: Vec<&str> = args.stops.iter().map(String::as_str).collect();
    let req = GenerateRequest {
        model: model.id,
        prompt,
        max_tokens: args.max_tokens,
        sampling: Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        stops: &stops,
    };
    let mut stream = c.generate(&req).await.map_err(cli)?;
    let mut out = GenerateOutcome::default();
    let mut stdout = std::io::stdout();
    while let Some(event) = stream.next().await.map_err(cli)? {
        if let GenerateEvent::Token { text, .. } = &event
            && !args.json
        {
            // Printed as it arrives; a closed stdout is not worth failing the node's work.
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        }
        out.record(&event);
    }
    drop(stream);
    if args.json {
        let v = serde_json::json!({
            "input_ids": out.input_ids,
            "generated_ids": out.generated_ids,
            "text": out.text,
            "finish_reason": out.finish_reason(),
        });
        println!("{v}");
    } else {
        println!();
        let s = &out.summary;
        let decode = s.generate_us as f64 / 1e6;
        let rate = if decode > 0.0 { f64::from(s.generated_tokens.saturating_sub(1)) / decode } else { 0.0 };
        eprintln!(
            "[{}: {} prompt tokens, {} generated; first token after {:.0} ms, {rate:.1} tokens/s after]",
            out.finish_reason(),
            s.prompt_tokens,
            s.generated_tokens,
            s.prompt_us as f64 / 1e3,
        );
    }
    c.close().await.map_err(cli)?;
    Ok(())
}

/// A client error as the CLI reports it.
fn cli(e: rela_client::ClientError) -> CliError {
    CliError::from(e.to_string())
}
