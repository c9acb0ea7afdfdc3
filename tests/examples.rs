//! Every example configuration a user may copy validates as written: each ```toml block in the
//! README and under docs/, and proxy.toml with its commented examples uncommented (by the rules
//! its header states), each written to a file and passed to `keygate --check`.
//!
//! Files the examples name under /etc/keygate/ (certificates and keys) are made for the run in a
//! scratch directory, since keygate reads them when it loads a config.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const KEYGATE: &str = env!("CARGO_BIN_EXE_keygate");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Where the examples keep their files, replaced by the scratch directory.
const EXAMPLE_DIR: &str = "/etc/keygate/";

/// A scratch directory holding a self-signed certificate and its key under every name the
/// examples use: `*.key` files get the key, every other file the certificate (which serves as a
/// CA and as a leaf alike).
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        common::self_signed(dir.path(), "self", "/CN=127.0.0.1");
        Files { dir }
    }

    /// `text` with every /etc/keygate/NAME made and pointing into the scratch directory.
    fn place(&self, text: &str) -> String {
        let mut rest = text;
        while let Some(at) = rest.find(EXAMPLE_DIR) {
            let name: String = rest[at + EXAMPLE_DIR.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
                .collect();
            let source = if name.ends_with(".key") {
                "self.key"
            } else {
                "self.pem"
            };
            std::fs::copy(self.dir.path().join(source), self.dir.path().join(&name)).unwrap();
            rest = &rest[at + EXAMPLE_DIR.len()..];
        }
        text.replace(EXAMPLE_DIR, &format!("{}/", self.dir.path().display()))
    }

    /// `keygate --check` on `text`: None when it validates, else what keygate said.
    fn check(&self, text: &str) -> Option<String> {
        let path: PathBuf = self.dir.path().join("example.toml");
        std::fs::write(&path, self.place(text)).unwrap();
        let out = Command::new(KEYGATE)
            .args(["--check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Every ```toml block of a Markdown file, with the line it starts on.
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in markdown.lines().enumerate() {
        match &mut current {
            None if line.trim_start().starts_with("```toml") => {
                current = Some((n + 1, String::new()))
            }
            None => {}
            Some(_) if line.trim_start().starts_with("```") => blocks.push(current.take().unwrap()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(current.is_none(), "an unclosed ```toml block");
    blocks
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![Path::new(ROOT).join("README.md")];
    let docs = Path::new(ROOT).join("docs");
    for entry in std::fs::read_dir(&docs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn every_toml_block_in_the_readme_and_docs_validates() {
    let files = Files::new();
    let mut checked = 0;
    let mut failures = Vec::new();
    for path in markdown_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        for (line, block) in toml_blocks(&text) {
            checked += 1;
            if let Some(why) = files.check(&block) {
                failures.push(format!("{}:{line}: {why}{block}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The README's four configs to copy at least (sidecar, ketama, cluster, tenants).
    assert!(checked >= 4, "only {checked} ```toml blocks found");
}

/// What one line of proxy.toml is, by the rules its header states.
#[derive(Debug, PartialEq)]
enum Line {
    /// Not a comment, or a blank line.
    Active,
    /// `# key = value`: a setting to uncomment where it stands.
    Setting,
    /// `# [section]` or `# [[section]]`: starts a complete example block.
    BlockStart,
    /// `# -- kind = "a" or "b" only --`: the settings after it are for those kinds.
    KindGroup(Vec<String>),
    /// An explanation.
    Prose,
}

fn classify(line: &str) -> Line {
    let Some(rest) = line.strip_prefix("# ") else {
        return if line.starts_with('#') {
            Line::Prose
        } else {
            Line::Active
        };
    };
    if let Some(kinds) = rest
        .strip_prefix("-- kind = ")
        .and_then(|r| r.strip_suffix(" only --"))
    {
        return Line::KindGroup(
            kinds
                .split(" or ")
                .map(|k| k.trim_matches('"').to_string())
                .collect(),
        );
    }
    if rest.starts_with('[') && rest.parse::<toml::Table>().is_ok() {
        return Line::BlockStart;
    }
    // A setting starts with its key, unindented, and parses on its own; an indented example
    // inside an explanation is prose.
    let starts_with_key = rest.starts_with(|c: char| c.is_ascii_lowercase());
    match rest.parse::<toml::Table>() {
        Ok(table) if starts_with_key && table.len() == 1 => Line::Setting,
        _ => Line::Prose,
    }
}

/// proxy.toml with some of its examples uncommented: the settings outside kind groups and the
/// settings of the groups naming `kind` (with `kind` set to it), and, if `blocks`, every block.
/// Also returns how many lines it uncommented.
fn uncommented(text: &str, kind: &str, blocks: bool) -> (String, usize) {
    let mut out = String::new();
    let mut group: Option<Vec<String>> = None;
    // Inside a block (from its `# [section]` line to the first line that is not a comment).
    let mut in_block = false;
    let mut changed = 0;
    for line in text.lines() {
        let class = classify(line);
        if in_block && !line.starts_with('#') {
            in_block = false;
        }
        let uncomment = |line: &str| line.strip_prefix("# ").unwrap_or("").to_string();
        if class == Line::BlockStart {
            in_block = true;
            group = None;
        }
        let new = match class {
            _ if in_block && blocks => uncomment(line),
            _ if in_block => line.to_string(),
            Line::KindGroup(kinds) => {
                group = Some(kinds);
                line.to_string()
            }
            Line::Active if line.starts_with('[') => {
                group = None;
                line.to_string()
            }
            Line::Active if line.starts_with("kind = ") => format!("kind = \"{kind}\""),
            Line::Setting => match &group {
                Some(kinds) if !kinds.iter().any(|k| k == kind) => line.to_string(),
                _ => uncomment(line),
            },
            _ => line.to_string(),
        };
        if new != line {
            changed += 1;
        }
        out.push_str(&new);
        out.push('\n');
    }
    (out, changed)
}

#[test]
fn proxy_toml_validates_with_every_example_uncommented() {
    let files = Files::new();
    let text = std::fs::read_to_string(Path::new(ROOT).join("proxy.toml")).unwrap();
    if let Some(why) = files.check(&text) {
        panic!("proxy.toml as written: {why}");
    }
    // Everything for a standalone server, blocks included (the tenants, TLS for clients).
    let (all, changed) = uncommented(&text, "standalone", true);
    if let Some(why) = files.check(&all) {
        panic!("proxy.toml with every example uncommented: {why}\n{all}");
    }
    assert!(changed > 40, "only {changed} lines uncommented:\n{all}");
    // Each kind with its own settings (the tenants' `isolation = "database"` is not for a
    // cluster, so blocks stay commented here; they were checked above).
    let mut kinds_seen = 0;
    for kind in ["ketama", "cluster", "sentinel"] {
        let (variant, _) = uncommented(&text, kind, false);
        assert_ne!(variant, uncommented(&text, "standalone", false).0);
        kinds_seen += 1;
        if let Some(why) = files.check(&variant) {
            panic!("proxy.toml uncommented for kind = {kind:?}: {why}\n{variant}");
        }
    }
    assert_eq!(kinds_seen, 3);
    // Nothing that looks like a setting is left commented in a way these rules would miss (an
    // indented one, or one nested in a block as `# # key = value`).
    for (n, line) in text.lines().enumerate() {
        let bare = line.trim_start_matches(['#', ' ']);
        let key = bare.split_once(" = ").map_or("", |(key, _)| key);
        let looks_like_setting = !key.is_empty()
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            && bare.parse::<toml::Table>().is_ok();
        if line.starts_with('#') && looks_like_setting {
            assert_eq!(
                classify(line),
                Line::Setting,
                "proxy.toml:{}: {line:?} looks like a setting but is not one by the header's rules",
                n + 1
            );
        }
    }
}

/// The extraction rules themselves, on the mistake they exist to catch: an explanation with a
/// single `#` inside a block becomes invalid TOML when the block is uncommented.
#[test]
fn a_block_with_a_single_hash_explanation_is_caught() {
    let files = Files::new();
    let good = "listen = \"127.0.0.1:6380\"\n[upstream]\nkind = \"standalone\"\nservers = [\"127.0.0.1:6379\"]\n\n# [[tenants]]\n# name = \"a\"\n# # the password\n# password = \"p\"\n# prefix = \"a:\"\n";
    let (text, _) = uncommented(good, "standalone", true);
    assert_eq!(files.check(&text), None, "{text}");
    let bad = good.replace("# # the password", "# the password");
    let (text, _) = uncommented(&bad, "standalone", true);
    assert!(files.check(&text).is_some(), "{text}");
}
