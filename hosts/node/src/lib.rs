//! The tokio RELA relay node: a thin driver of rela-core's session state machine
