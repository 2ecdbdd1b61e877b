//! Terminal colours, off when `NO_COLOR` is set (https://no-color.org) or stdout is no terminal.

use std::io::IsTerminal;

/// Whether and how to colour output.
#[derive(Clone, Copy, Debug)]
pub struct Palette {
    on: bool,
}

impl Palette {
    /// Colours if stdout is a terminal and `NO_COLOR` is unset or empty.
    pub fn detect() -> Palette {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Palette { on: !no_color && std::io::stdout().is_terminal() }
    }

    /// No colours (playbook transcripts, the TUI's own styling).
    pub fn plain() -> Palette {
        Palette { on: false }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.on { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
    }

    /// Another user's name.
    pub fn user(self, text: &str) -> String {
        self.paint("1;36", text)
    }

    /// This user's own name.
    pub fn me(self, text: &str) -> String {
        self.paint("1;32", text)
    }

    /// Ids and other secondary detail.
    pub fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }

    /// Things that happened (edits, reactions, members joining).
    pub fn notice(self, text: &str) -> String {
        self.paint("33", text)
    }

    /// Errors.
    pub fn error(self, text: &str) -> String {
        self.paint("31", text)
    }

    /// Headings.
    pub fn heading(self, text: &str) -> String {
        self.paint("1", text)
    }
}
