//! The interactive line editor: tab completion of commands, usernames, conversations and file
//! paths, and a history of command lines kept across runs.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{Editor, Helper};
use tokio::sync::mpsc;

use crate::command::{ArgKind, COMMANDS, find};

/// What completion can offer beyond command names; refreshed by the REPL as it learns more.
#[derive(Debug, Default)]
pub struct Known {
    /// Usernames of the members of this device's conversations (not this user).
    pub users: Vec<String>,
    /// Conversations as `/switch` takes them: `@peer`, `#group`.
    pub conversations: Vec<String>,
}

/// Most command lines the history file keeps.
const HISTORY_LINES: usize = 1000;

/// Completions for the text before the cursor (`head`), except file paths: where the
/// replaced word starts, and the candidates.
pub fn complete_words(head: &str, known: &Known) -> (usize, Vec<String>) {
    let Some(rest) = head.strip_prefix('/') else { return (head.len(), Vec::new()) };
    let Some((word, _)) = rest.split_once(' ') else {
        let mut names: Vec<String> = COMMANDS
            .iter()
            .flat_map(|s| std::iter::once(s.name).chain(s.aliases.iter().copied()))
            .filter(|n| n.starts_with(rest))
            .map(|n| format!("/{n} "))
            .collect();
        names.sort();
        return (0, names);
    };
    let start = head.rfind(' ').map_or(0, |i| i + 1);
    let partial = &head[start..];
    // Only the first argument completes (every completable command takes one).
    if head[..start].split_whitespace().count() > 1 {
        return (start, Vec::new());
    }
    let pool: Vec<String> = match find(word).map(|s| (s.name, s.arg_kind)) {
        Some((_, ArgKind::User)) => known.users.clone(),
        Some((_, ArgKind::Conversation)) => known.conversations.clone(),
        Some(("help", _)) => COMMANDS.iter().map(|s| s.name.to_owned()).collect(),
        Some(("typing-notify", _)) => vec!["on".into(), "off".into()],
        Some(("disappear", _)) => ["30m", "1h", "1d", "7d", "off"].map(String::from).to_vec(),
        _ => Vec::new(),
    };
    let candidates = pool.into_iter().filter(|c| c.starts_with(partial)).map(|c| format!("{c} ")).collect();
    (start, candidates)
}

/// Completion for the line editor.
struct ReplHelper {
    known: Arc<RwLock<Known>>,
    files: FilenameCompleter,
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let head = &line[..pos];
        if let Some((word, _)) = head.strip_prefix('/').and_then(|r| r.split_once(' '))
            && find(word).is_some_and(|s| s.arg_kind == ArgKind::Path)
        {
            return self.files.complete_path(line, pos);
        }
        let Ok(known) = self.known.read() else { return Ok((pos, Vec::new())) };
        let (start, words) = complete_words(head, &known);
        let pairs = words.into_iter().map(|w| Pair { display: w.trim_end().to_owned(), replacement: w }).collect();
        Ok((start, pairs))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}
impl Highlighter for ReplHelper {}
impl Validator for ReplHelper {}
impl Helper for ReplHelper {}

/// The interactive line editor, before its thread starts.
pub struct LineReader {
    editor: Editor<ReplHelper, FileHistory>,
    history: Option<PathBuf>,
}

impl std::fmt::Debug for LineReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineReader").field("history", &self.history).finish_non_exhaustive()
    }
}

impl LineReader {
    /// An editor completing from `known`, with the history in `history` (if any) loaded.
    pub fn new(known: Arc<RwLock<Known>>, history: Option<PathBuf>) -> anyhow::Result<LineReader> {
        let config = rustyline::Config::builder()
            .max_history_size(HISTORY_LINES)
            .context("configuring the line editor")?
            .auto_add_history(false)
            .completion_type(rustyline::CompletionType::List)
            .build();
        let mut editor = Editor::with_config(config).context("starting the line editor")?;
        editor.set_helper(Some(ReplHelper { known, files: FilenameCompleter::new() }));
        if let Some(path) = &history
            && path.exists()
            && let Err(e) = editor.load_history(path)
        {
            tracing::warn!(error = %e, "REPL history not loaded");
        }
        Ok(LineReader { editor, history })
    }

    /// Reads lines on a thread of its own (terminal reads block): one line per prompt it is
    /// sent; `None` marks the end of input. Returns the printer for output above the prompt.
    pub fn spawn(
        mut self,
        line_tx: mpsc::Sender<Option<String>>,
        prompts: std::sync::mpsc::Receiver<String>,
    ) -> anyhow::Result<Box<dyn rustyline::ExternalPrinter + Send>> {
        let printer = self.editor.create_external_printer().context("starting the line editor")?;
        std::thread::spawn(move || {
            while let Ok(prompt) = prompts.recv() {
                match self.editor.readline(&prompt) {
                    Ok(line) => {
                        self.remember(&line);
                        if line_tx.blocking_send(Some(line)).is_err() {
                            break;
                        }
                    }
                    Err(ReadlineError::Interrupted | ReadlineError::Eof) => {
                        let _ = line_tx.blocking_send(None);
                        break;
                    }
                    Err(e) => {
                        eprintln!("qpc: input error: {e}");
                        let _ = line_tx.blocking_send(None);
                        break;
                    }
                }
            }
        });
        Ok(Box::new(printer))
    }

    /// Keeps a command line in the history and its file. Message text stays out of it (plain
    /// text, `/edit`): it is end-to-end encrypted everywhere else and must not land on disk.
    fn remember(&mut self, line: &str) {
        if !keep_in_history(line) {
            return;
        }
        let _ = self.editor.add_history_entry(line);
        let Some(path) = &self.history else { return };
        if let Err(e) = self.editor.append_history(path) {
            tracing::warn!(error = %e, "REPL history not saved");
            return;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
    }
}

/// Whether a line may be written to the history file.
pub fn keep_in_history(line: &str) -> bool {
    let line = line.trim();
    let word = line.split_whitespace().next().unwrap_or_default();
    line.starts_with('/') && word != "/edit" && word != "/delete-account"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Known {
        Known { users: vec!["bob".into(), "carol".into()], conversations: vec!["#team".into(), "@bob".into()] }
    }

    #[test]
    fn completes_command_names_and_aliases() {
        let (start, c) = complete_words("/de", &known());
        assert_eq!(start, 0);
        assert_eq!(c, vec!["/delete ", "/delete-account "]);
        let (_, c) = complete_words("/g", &known());
        assert_eq!(c, vec!["/gi ", "/group-info "]);
        assert!(complete_words("hello", &known()).1.is_empty());
    }

    #[test]
    fn completes_users_conversations_and_values() {
        assert_eq!(complete_words("/invite c", &known()), (8, vec!["carol ".to_owned()]));
        assert_eq!(complete_words("/dm ", &known()).1, vec!["bob ", "carol "]);
        assert_eq!(complete_words("/switch #", &known()), (8, vec!["#team ".to_owned()]));
        assert_eq!(complete_words("/typing-notify o", &known()).1, vec!["on ", "off "]);
        assert_eq!(complete_words("/help rea", &known()).1, vec!["react "]);
        assert!(complete_words("/invite bob c", &known()).1.is_empty());
    }

    #[test]
    fn keeps_message_text_out_of_history() {
        assert!(keep_in_history("/dm bob"));
        assert!(!keep_in_history("hello bob"));
        assert!(!keep_in_history("/edit a1b2c3 secret text"));
        assert!(!keep_in_history("/delete-account"));
    }
}
