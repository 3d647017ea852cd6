//! What the CLI prints: JSON for scripts (`--json`), text for people, colours only on a
//! terminal (and not with `NO_COLOR`). Notes and errors go to standard error, so standard
//! output holds only what was asked for (the reply, the list, the export).

use std::io::{IsTerminal, Write};

use serde::Serialize;

use soma_contract::Role;

pub struct Output {
    pub json: bool,
    colour: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Output { json, colour }
    }

    /// `value` as one line of JSON with `--json`, else whatever `human` prints.
    pub fn json_or<T: Serialize>(&self, value: &T, human: impl FnOnce()) {
        if self.json {
            println!("{}", serde_json::to_string(value).expect("API values serialize"));
        } else {
            human();
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }

    /// A remark for people (dim), on standard error; none with `--json`.
    pub fn note(&self, text: &str) {
        if !self.json {
            eprintln!("{}", self.paint("2", text));
        }
    }

    /// An error, on standard error (as JSON with `--json`).
    pub fn error(&self, text: &str) {
        if self.json {
            eprintln!("{}", serde_json::json!({ "error": text }));
        } else {
            eprintln!("{} {text}", self.paint("1;31", "error:"));
        }
    }

    /// A piece of the reply, written at once.
    pub fn stream(&self, text: &str) {
        if !self.json {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        }
    }

    pub fn role(&self, role: Role) -> String {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        match (role, colour) {
            (Role::User, true) => format!("\x1b[1;36m{role}\x1b[0m"),
            (Role::Assistant, true) => format!("\x1b[1;32m{role}\x1b[0m"),
            _ => role.to_string(),
        }
    }
}
