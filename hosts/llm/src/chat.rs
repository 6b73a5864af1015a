//! Chat prompts rendered with the GGUF file's own Jinja template (`tokenizer.chat_template`).
//!
//! Rendered with [`minijinja`] the way Hugging Face `transformers` renders them
//! (`apply_chat_template`): `trim_blocks` and `lstrip_blocks` on, `{% break %}`/`{% continue %}`,
//! Python string and dict methods (`.strip()`, `.startswith()`, `.items()`...), `raise_exception`,
//! and the variables `messages`, `add_generation_prompt`, `bos_token` and `eos_token`.
//!
//! A template comes from a model file, so rendering is bounded: at most [`FUEL`] template
//! instructions, [`MAX_RENDERED_BYTES`] of output and [`MAX_INDENT`] for the widths that
//! `indent` and `tojson` allocate up front (a template that loops forever, writes without end or
//! asks for a huge width fails with [`ChatError::Render`] or [`ChatError::TooLong`]).

use std::fmt;

use minijinja::value::Rest;
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value as JValue, context};
use serde::{Deserialize, Serialize};

use crate::gguf::Gguf;

const TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// Template instructions one rendering may run (a chat template spends tens per message).
pub const FUEL: u64 = 1_000_000;

/// Most bytes one rendering may produce.
pub const MAX_RENDERED_BYTES: usize = 4 << 20;

/// Collects output up to [`MAX_RENDERED_BYTES`].
struct Capped(Vec<u8>, bool);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_RENDERED_BYTES {
            self.1 = true;
            return Err(std::io::Error::other("rendered chat prompt is too long"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One chat message, as chat apps send them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant` (templates may know others).
    pub role: String,
    /// The message's text.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// Why a chat prompt could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatError {
    /// The file has no `tokenizer.chat_template` (or not a string).
    NoTemplate,
    /// The template does not compile.
    Syntax(String),
    /// Rendering failed (including the template's own `raise_exception`, and running out of
    /// [`FUEL`]).
    Render(String),
    /// The rendered text would pass [`MAX_RENDERED_BYTES`].
    TooLong,
}

impl fmt::Display for ChatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoTemplate => write!(f, "the model has no chat template ({TEMPLATE_KEY})"),
            Self::Syntax(e) => write!(f, "chat template does not compile: {e}"),
            Self::Render(e) => write!(f, "chat template failed: {e}"),
            Self::TooLong => write!(f, "rendered chat prompt passes {MAX_RENDERED_BYTES} bytes"),
        }
    }
}

impl std::error::Error for ChatError {}

/// A compiled chat template with the tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

fn raise_exception(msg: String) -> Result<JValue, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// Widest indentation a template may ask of `indent` and `tojson`: both allocate the width
/// before writing anything, so an unchecked width from a model file is an allocation of any size.
pub const MAX_INDENT: i64 = 64;

/// The built-in filter `builtin`, refusing a width above [`MAX_INDENT`] given as the positional
/// argument at `pos` (after the value) or as the keyword `keyword`.
fn width_checked(
    builtin: JValue,
    pos: usize,
    keyword: &'static str,
) -> impl Fn(&minijinja::State, Rest<JValue>) -> Result<JValue, minijinja::Error> + Send + Sync + 'static {
    move |state, args| {
        let positional = args.iter().filter(|a| !a.is_kwargs()).nth(pos + 1);
        let keyed = args.iter().filter(|a| a.is_kwargs()).filter_map(|k| k.get_attr(keyword).ok());
        for w in positional.cloned().into_iter().chain(keyed) {
            if let Ok(n) = i64::try_from(w)
                && n > MAX_INDENT
            {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("an indentation of {n} is wider than {MAX_INDENT}"),
                ));
            }
        }
        builtin.call(state, &args)
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the strings templates see under those names.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        let indent = JValue::from_function(minijinja::filters::indent);
        env.add_filter("indent", width_checked(indent, 0, "width"));
        let tojson = JValue::from_function(minijinja::filters::tojson);
        env.add_filter("tojson", width_checked(tojson, 0, "indent"));
        env.add_template_owned("chat", source.to_owned()).map_err(|e| ChatError::Syntax(e.to_string()))?;
        Ok(Self { env, bos_token: bos_token.to_owned(), eos_token: eos_token.to_owned() })
    }

    /// Limits each rendering to `fuel` template instructions instead of [`FUEL`].
    pub fn set_fuel(&mut self, fuel: u64) {
        self.env.set_fuel(Some(fuel));
    }

    /// The template of a GGUF file, with its BOS and EOS tokens' strings.
    pub fn from_gguf(g: &Gguf) -> Result<Self, ChatError> {
        let source = g.get(TEMPLATE_KEY).and_then(|v| v.as_str()).ok_or(ChatError::NoTemplate)?;
        let token = |key: &str| -> String {
            let id = g.get(key).and_then(|v| v.as_u64());
            let tokens = g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array());
            match (id, tokens) {
                (Some(id), Some(crate::gguf::Array::String(t))) => {
                    usize::try_from(id).ok().and_then(|i| t.get(i)).cloned().unwrap_or_default()
                }
                _ => String::new(),
            }
        };
        Self::new(source, &token("tokenizer.ggml.bos_token_id"), &token("tokenizer.ggml.eos_token_id"))
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, ChatError> {
        let tmpl = self.env.get_template("chat").map_err(|e| ChatError::Render(e.to_string()))?;
        let mut out = Capped(Vec::new(), false);
        tmpl.render_captured_to(
            context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            },
            &mut out,
        )
        .map_err(|e| if out.1 { ChatError::TooLong } else { ChatError::Render(e.to_string()) })?;
        // Every piece written is a &str of the template's output.
        String::from_utf8(out.0).map_err(|e| ChatError::Render(e.to_string()))
    }
}
