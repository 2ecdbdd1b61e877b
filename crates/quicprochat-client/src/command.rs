//! The one `Command` enum every front end produces (REPL lines, one-shot arguments), the
//! catalogue of REPL commands (help, aliases, completion), and the REPL line parser.

use std::path::PathBuf;
use std::time::Duration;

/// Which conversation a command acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The REPL's current conversation.
    Current,
    /// The DM with this user (opened or created as needed).
    Dm(String),
    /// The group (or conversation) with this local name.
    Named(String),
}

/// Something the user asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Open (or create) the DM with a user and make it current.
    Dm(String),
    /// Send text.
    Send { to: Target, text: String },
    /// List conversations.
    List,
    /// Make another conversation current.
    Switch(String),
    /// The last n messages of the current conversation.
    History(u32),
    /// React to a message (the latest one without an id).
    React { emoji: String, message: Option<String> },
    /// Withdraw one's reaction (to the latest message without an id).
    Unreact { message: Option<String> },
    /// Tell the members that this user is typing.
    Typing,
    /// Show others' typing indicators, or not.
    TypingNotify(bool),
    /// Replace the text of one's own message.
    Edit { message: String, text: String },
    /// Delete one's own message for everyone.
    Delete { message: String },
    /// Encrypt and send a file.
    SendFile(PathBuf),
    /// Save the file a message shares into the working directory.
    Download(String),
    /// Set (`Some`) or turn off the disappearing-message timer.
    Disappear(Option<Duration>),
    /// Create a group with these members.
    CreateGroup { name: String, members: Vec<String> },
    /// Add a user to a conversation.
    Invite { to: Target, user: String },
    /// Remove a user from a group.
    Remove { from: Target, user: String },
    /// Leave a group.
    Leave(Target),
    /// Fetch waiting invitations.
    Join,
    /// Members of the current conversation.
    Members,
    /// Name, id, members, epoch and timer of the current conversation.
    GroupInfo,
    /// Rename the current conversation on this device.
    Rename(String),
    /// The safety number shared with a user.
    Verify(String),
    /// Rotate this device's keys in the current conversation.
    RotateKey,
    /// Write the stored messages of one conversation (by name or peer) or of all to an
    /// encrypted transcript archive.
    Export { conversation: Option<String>, out: PathBuf },
    /// Decrypt a transcript archive and check its chain.
    VerifyExport(PathBuf),
    /// Delete the account; `confirmed` once the user said so.
    DeleteAccount { confirmed: bool },
    /// Who is logged in.
    Whoami,
    /// Help, overall or for one command.
    Help(Option<String>),
    /// Leave the REPL.
    Quit,
}

/// A help category.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    Chat,
    Groups,
    Security,
    System,
}

impl Category {
    /// All, in the order help shows them.
    pub const ALL: [Category; 4] = [Category::Chat, Category::Groups, Category::Security, Category::System];

    /// Heading.
    pub fn title(self) -> &'static str {
        match self {
            Category::Chat => "Chat",
            Category::Groups => "Groups",
            Category::Security => "Security",
            Category::System => "System",
        }
    }
}

/// What an argument of a REPL command is, for tab completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    None,
    User,
    Conversation,
    Path,
    Other,
}

/// One REPL command as help and completion know it.
#[derive(Debug)]
pub struct Spec {
    /// Name without the slash.
    pub name: &'static str,
    /// Other names.
    pub aliases: &'static [&'static str],
    /// Arguments, as usage shows them.
    pub args: &'static str,
    /// Completion of the first argument.
    pub arg_kind: ArgKind,
    /// Category.
    pub category: Category,
    /// One line.
    pub summary: &'static str,
}

impl Spec {
    /// `usage: /name args`.
    pub fn usage(&self) -> String {
        if self.args.is_empty() {
            format!("usage: /{}", self.name)
        } else {
            format!("usage: /{} {}", self.name, self.args)
        }
    }

    fn is(&self, word: &str) -> bool {
        self.name == word || self.aliases.contains(&word)
    }
}

const fn spec(
    name: &'static str,
    aliases: &'static [&'static str],
    args: &'static str,
    arg_kind: ArgKind,
    category: Category,
    summary: &'static str,
) -> Spec {
    Spec { name, aliases, args, arg_kind, category, summary }
}

use ArgKind as A;
use Category as C;

/// Every REPL command. Plain text (no leading slash) is sent to the current conversation.
pub const COMMANDS: &[Spec] = &[
    spec("dm", &[], "<user>", A::User, C::Chat, "open (or create) the direct conversation with <user>"),
    spec("list", &["ls"], "", A::None, C::Chat, "list conversations"),
    spec("switch", &["sw"], "@user|#group", A::Conversation, C::Chat, "make another conversation current"),
    spec("history", &["hist"], "[n]", A::None, C::Chat, "last n (20) messages, with their short ids"),
    spec("react", &[], "<emoji> [id]", A::Other, C::Chat, "react to message <id> (default: the latest)"),
    spec("unreact", &[], "[id]", A::None, C::Chat, "withdraw your reaction to <id> (default: the latest)"),
    spec("edit", &[], "<id> <text>", A::None, C::Chat, "replace the text of your message <id>"),
    spec("delete", &[], "<id>", A::None, C::Chat, "delete your message <id> for everyone"),
    spec("typing", &[], "", A::None, C::Chat, "tell the others you are typing"),
    spec("typing-notify", &[], "on|off", A::Other, C::Chat, "show others' typing indicators, or not"),
    spec("send-file", &["sf"], "<path>", A::Path, C::Chat, "encrypt and send a file"),
    spec("download", &["dl"], "<id>", A::None, C::Chat, "save the file of message <id> here"),
    spec("disappear", &[], "<30m|1h|1d|7d|off>", A::Other, C::Chat, "messages disappear this long after arriving"),
    spec("create-group", &["cg"], "<name> [users…]", A::Other, C::Groups, "create a group with these members"),
    spec("invite", &[], "<user>", A::User, C::Groups, "add <user> to the current group"),
    spec("remove", &[], "<user>", A::User, C::Groups, "remove <user> from the current group"),
    spec("join", &[], "", A::None, C::Groups, "fetch waiting invitations (they are accepted on arrival)"),
    spec("leave", &[], "", A::None, C::Groups, "leave the current group"),
    spec("members", &[], "", A::None, C::Groups, "members of the current conversation"),
    spec("group-info", &["gi"], "", A::None, C::Groups, "name, id, members, epoch and timer of the conversation"),
    spec("rename", &[], "<name>", A::Other, C::Groups, "rename the current conversation (on this device)"),
    spec("verify", &[], "<user>", A::User, C::Security, "safety number to compare with <user> out of band"),
    spec("update-key", &["rotate-key"], "", A::None, C::Security, "rotate your keys in the current conversation"),
    spec("delete-account", &[], "", A::None, C::Security, "delete your account and this device's data (asks first)"),
    spec(
        "export",
        &[],
        "[@user|#group] <file> | verify <file>",
        A::Path,
        C::Security,
        "write messages to an encrypted archive (all, or one conversation), or check one",
    ),
    spec("whoami", &[], "", A::None, C::System, "who you are logged in as"),
    spec("help", &["h", "?"], "[command]", A::Other, C::System, "this help, or help on one command"),
    spec("quit", &["q", "exit"], "", A::None, C::System, "leave"),
];

/// The command named `word` (a name or an alias, without the slash).
pub fn find(word: &str) -> Option<&'static Spec> {
    let word = word.trim_start_matches('/');
    COMMANDS.iter().find(|s| s.is(word))
}

/// Categorised help for every command.
pub fn help() -> String {
    let mut out = String::from("Type text to send it to the current conversation. Commands:\n");
    for category in Category::ALL {
        out.push_str(category.title());
        out.push_str(":\n");
        for s in COMMANDS.iter().filter(|s| s.category == category) {
            let mut names = format!("/{}", s.name);
            for alias in s.aliases {
                names.push_str(&format!(", /{alias}"));
            }
            let left = if s.args.is_empty() { names } else { format!("{names} {}", s.args) };
            out.push_str(&format!("  {left:<36} {}\n", s.summary));
        }
    }
    out.push_str("Messages are referenced by the short id /history shows (a unique prefix is enough).\n");
    out.push_str("/help <command> shows one command.");
    out
}

/// Help on one command.
pub fn help_for(word: &str) -> Option<String> {
    let s = find(word)?;
    let mut out = format!("{}\n  {}", s.usage(), s.summary);
    if !s.aliases.is_empty() {
        let aliases: Vec<String> = s.aliases.iter().map(|a| format!("/{a}")).collect();
        out.push_str(&format!("\n  aliases: {}", aliases.join(", ")));
    }
    out.push_str(&format!("\n  category: {}", s.category.title()));
    Some(out)
}

/// Parses one REPL line: `Ok(None)` for nothing to do, `Err` with the message to show.
pub fn parse_line(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(Some(Command::Send { to: Target::Current, text: line.to_owned() }));
    };
    let (word, args) = match rest.split_once(char::is_whitespace) {
        Some((w, a)) => (w, a.trim()),
        None => (rest, ""),
    };
    if word.is_empty() {
        return Err("empty command; try /help".into());
    }
    let spec = find(word).ok_or_else(|| format!("unknown command /{word}; try /help"))?;
    let words: Vec<&str> = args.split_whitespace().collect();
    let usage = || spec.usage();
    let user = |w: &str| w.trim_start_matches('@').to_lowercase();
    let command = match (spec.name, words.as_slice()) {
        ("dm", [u]) => Command::Dm(user(u)),
        ("list", []) => Command::List,
        // Names may hold spaces (a group named "the team", or an invitee's group named after its other
        // members, "alice, carol", until its name arrives).
        ("switch", [_, ..]) => Command::Switch(args.trim_start_matches(['@', '#']).to_owned()),
        ("history", []) => Command::History(20),
        ("history", [n]) => Command::History(n.parse().map_err(|_| usage())?),
        ("react", [emoji]) => Command::React { emoji: (*emoji).to_owned(), message: None },
        ("react", [emoji, id]) => Command::React { emoji: (*emoji).to_owned(), message: Some(message_ref(id)?) },
        ("unreact", []) => Command::Unreact { message: None },
        ("unreact", [id]) => Command::Unreact { message: Some(message_ref(id)?) },
        ("edit", [id, _, ..]) => {
            let text = args[id.len()..].trim().to_owned();
            Command::Edit { message: message_ref(id)?, text }
        }
        ("delete", [id]) => Command::Delete { message: message_ref(id)? },
        ("typing", []) => Command::Typing,
        ("typing-notify", ["on"]) => Command::TypingNotify(true),
        ("typing-notify", ["off"]) => Command::TypingNotify(false),
        // A path may hold spaces: everything after the command is the path.
        ("send-file", [_, ..]) => Command::SendFile(PathBuf::from(args)),
        ("download", [id]) => Command::Download(message_ref(id)?),
        ("disappear", [d]) => Command::Disappear(parse_timer(d).ok_or_else(usage)?),
        ("create-group", [name, members @ ..]) => Command::CreateGroup {
            name: name.trim_start_matches('#').to_owned(),
            members: members.iter().map(|m| user(m)).collect(),
        },
        ("invite", [u]) => Command::Invite { to: Target::Current, user: user(u) },
        ("remove", [u]) => Command::Remove { from: Target::Current, user: user(u) },
        ("join", []) => Command::Join,
        ("leave", []) => Command::Leave(Target::Current),
        ("members", []) => Command::Members,
        ("group-info", []) => Command::GroupInfo,
        ("rename", [_, ..]) => Command::Rename(args.to_owned()),
        ("verify", [u]) => Command::Verify(user(u)),
        ("update-key", []) => Command::RotateKey,
        ("delete-account", []) => Command::DeleteAccount { confirmed: false },
        // Paths may hold spaces: everything after the verb (or the conversation) is the path.
        ("export", ["verify"]) => return Err(usage()),
        ("export", [c]) if c.starts_with(['@', '#']) => return Err(usage()),
        ("export", ["verify", _, ..]) => Command::VerifyExport(PathBuf::from(args["verify".len()..].trim())),
        ("export", [c, _, ..]) if c.starts_with(['@', '#']) => Command::Export {
            conversation: Some(c.trim_start_matches(['@', '#']).to_owned()),
            out: PathBuf::from(args[c.len()..].trim()),
        },
        ("export", [_, ..]) => Command::Export { conversation: None, out: PathBuf::from(args) },
        ("whoami", []) => Command::Whoami,
        ("help", []) => Command::Help(None),
        ("help", [topic]) => Command::Help(Some((*topic).to_owned())),
        ("quit", []) => Command::Quit,
        _ => return Err(usage()),
    };
    Ok(Some(command))
}

/// Shortest message-id prefix accepted, so a stray character does not pick a message.
pub const MIN_ID_PREFIX: usize = 4;

/// Checks a message reference: a hex prefix of a message id, at least [`MIN_ID_PREFIX`] long.
fn message_ref(s: &str) -> Result<String, String> {
    let s = s.to_lowercase();
    if s.len() < MIN_ID_PREFIX || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{s:?} is not a message id: give at least {MIN_ID_PREFIX} hex digits of an id that /history shows"
        ));
    }
    Ok(s)
}

/// Parses a disappearing timer: `off`, or a number with a unit (`s`, `m`, `h`, `d`, `w`).
pub fn parse_timer(s: &str) -> Option<Option<Duration>> {
    let s = s.to_lowercase();
    if s == "off" {
        return Some(None);
    }
    let unit = s.chars().last()?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().ok().filter(|n| *n > 0)?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return None,
    };
    Some(Some(Duration::from_secs(n.checked_mul(secs)?)))
}

/// A timer for humans: the largest unit that divides it (`90m`, `1h`, `7d`).
pub fn format_timer(d: Duration) -> String {
    let secs = d.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= size && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse_line(line).unwrap().unwrap()
    }

    #[test]
    fn parses_commands_and_text() {
        assert_eq!(ok("/dm Bob"), Command::Dm("bob".into()));
        assert_eq!(ok("hello there"), Command::Send { to: Target::Current, text: "hello there".into() });
        assert_eq!(parse_line("  "), Ok(None));
        assert_eq!(ok("/quit"), Command::Quit);
        assert_eq!(ok("/ls"), Command::List);
        assert!(parse_line("/dm").is_err());
        assert!(parse_line("/nope").unwrap_err().contains("unknown command /nope"));
        assert_eq!(
            ok("/cg team Bob carol"),
            Command::CreateGroup { name: "team".into(), members: vec!["bob".into(), "carol".into()] }
        );
        assert!(parse_line("/cg").is_err());
        assert_eq!(ok("/invite Dave"), Command::Invite { to: Target::Current, user: "dave".into() });
        assert_eq!(ok("/switch #team"), Command::Switch("team".into()));
        assert_eq!(ok("/sw alice, carol"), Command::Switch("alice, carol".into()));
        assert!(parse_line("/switch").is_err());
        assert_eq!(ok("/remove Carol"), Command::Remove { from: Target::Current, user: "carol".into() });
        assert_eq!(ok("/rotate-key"), Command::RotateKey);
        assert_eq!(ok("/hist 5"), Command::History(5));
        assert_eq!(ok("/sf ./my file.txt"), Command::SendFile("./my file.txt".into()));
        assert_eq!(ok("/dl AB12"), Command::Download("ab12".into()));
        assert!(parse_line("/hist x").is_err());
        assert!(parse_line("/remove").is_err());
    }

    #[test]
    fn parses_rich_messaging() {
        assert_eq!(ok("/react 👍"), Command::React { emoji: "👍".into(), message: None });
        assert_eq!(ok("/react 👍 A1B2C3"), Command::React { emoji: "👍".into(), message: Some("a1b2c3".into()) });
        assert!(parse_line("/react").unwrap_err().starts_with("usage: /react"));
        assert!(parse_line("/react 👍 xyz!").unwrap_err().contains("not a message id"));
        assert_eq!(
            ok("/edit a1b2c3  new  text "),
            Command::Edit { message: "a1b2c3".into(), text: "new  text".into() }
        );
        assert!(parse_line("/edit a1b2c3").is_err());
        assert!(parse_line("/edit zz new").unwrap_err().contains("not a message id"));
        assert_eq!(ok("/delete a1b2"), Command::Delete { message: "a1b2".into() });
        assert!(parse_line("/delete a1").is_err());
        assert_eq!(ok("/typing"), Command::Typing);
        assert_eq!(ok("/typing-notify off"), Command::TypingNotify(false));
        assert!(parse_line("/typing-notify maybe").is_err());
        assert_eq!(ok("/disappear 30m"), Command::Disappear(Some(Duration::from_secs(1800))));
        assert_eq!(ok("/disappear off"), Command::Disappear(None));
        assert!(parse_line("/disappear 5x").is_err());
        assert!(parse_line("/disappear").is_err());
        assert_eq!(ok("/rename the crew"), Command::Rename("the crew".into()));
        assert!(parse_line("/rename").is_err());
        assert_eq!(ok("/gi"), Command::GroupInfo);
        assert_eq!(ok("/join"), Command::Join);
        assert_eq!(ok("/delete-account"), Command::DeleteAccount { confirmed: false });
        assert_eq!(ok("/help react"), Command::Help(Some("react".into())));
    }

    #[test]
    fn parses_export() {
        assert_eq!(ok("/export all.qpca"), Command::Export { conversation: None, out: "all.qpca".into() });
        assert_eq!(
            ok("/export @bob ./my archive.qpca"),
            Command::Export { conversation: Some("bob".into()), out: "./my archive.qpca".into() }
        );
        assert_eq!(
            ok("/export #team t.qpca"),
            Command::Export { conversation: Some("team".into()), out: "t.qpca".into() }
        );
        assert_eq!(ok("/export verify a b.qpca"), Command::VerifyExport("a b.qpca".into()));
        assert!(parse_line("/export").unwrap_err().starts_with("usage: /export"));
        assert!(parse_line("/export @bob").is_err());
        assert!(parse_line("/export verify").is_err(), "a forgotten file is not a file named verify");
    }

    #[test]
    fn timers_round_trip() {
        for (text, secs) in [("30m", 1800), ("1h", 3600), ("1d", 86_400), ("7d", 604_800), ("45s", 45)] {
            let d = parse_timer(text).unwrap().unwrap();
            assert_eq!(d.as_secs(), secs);
        }
        assert_eq!(format_timer(Duration::from_secs(1800)), "30m");
        assert_eq!(format_timer(Duration::from_secs(604_800)), "7d");
        assert_eq!(format_timer(Duration::from_secs(90)), "90s");
        assert_eq!(parse_timer("0h"), None);
        assert_eq!(parse_timer("h"), None);
    }

    #[test]
    fn every_command_has_help_and_unique_names() {
        let mut names = std::collections::HashSet::new();
        for s in COMMANDS {
            assert!(names.insert(s.name), "{}", s.name);
            for a in s.aliases {
                assert!(names.insert(a), "{a}");
            }
            assert!(help_for(s.name).unwrap().contains(s.summary));
        }
        for alias in ["cg", "ls", "hist", "sf", "dl", "rotate-key", "gi"] {
            assert!(find(alias).is_some(), "{alias}");
        }
        let help = help();
        for c in Category::ALL {
            assert!(help.contains(&format!("{}:\n", c.title())));
        }
    }
}
