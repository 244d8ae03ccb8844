//! One way for every TeeSQL binary to read its settings: a TOML file, environment
//! variables over it, flags over those. Values are typed (choices are `clap::ValueEnum`s,
//! read the same way from a flag, a variable or the file), defaults are named constants
//! at the place they apply, and every problem is collected so that one run of the
//! program names every bad key at once. Nothing is clamped silently: a value out of its
//! range is an error naming the key.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;

use clap::ValueEnum;

/// Reads settings from the environment; tests supply a map instead.
pub trait Env {
    /// The variable's value; unset and empty are the same.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// No environment at all (tests, embedded use).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
            .filter(|v| !v.is_empty())
    }
}

/// The problems found while resolving settings, each naming its key (or variable), and
/// notices that do not stop the program (a variable read by its deprecated name).
#[derive(Debug, Default)]
pub struct Problems(Vec<String>, Vec<String>);

impl Problems {
    /// No problems and no notices yet (same as `default()`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Record a problem with `key`.
    pub fn report(&mut self, key: &str, problem: impl Display) {
        self.0.push(format!("{key}: {problem}"));
    }

    /// Record a problem that concerns several keys or none (the message names them): a
    /// message, or an error whose message it is.
    pub fn push(&mut self, message: impl Display) {
        self.0.push(message.to_string());
    }

    /// `text` parsed as a `T`, or a problem naming `key`.
    pub fn parse<T>(&mut self, key: &str, text: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        text.parse()
            .map_err(|e| self.push(format!("{key} {text:?}: {e}")))
            .ok()
    }

    /// `text` as one of `T`'s choices (or their aliases), or a problem naming `key` and
    /// listing the choices.
    pub fn choice<T: ValueEnum>(&mut self, key: &str, text: &str) -> Option<T> {
        match T::from_str(text, false) {
            Ok(v) => Some(v),
            Err(_) => {
                self.push(format!("{key} {text:?}: expected {}", choices::<T>()));
                None
            }
        }
    }

    /// The first layer that gives a value (flag, variable, file: each with the name it
    /// is reported by), as one of `T`'s choices. `None` when no layer gives one, or when
    /// the value is not a choice (then a problem is recorded).
    pub fn first_choice<T: ValueEnum, const N: usize>(
        &mut self,
        layers: [(&str, Option<String>); N],
    ) -> Option<T> {
        let (key, text) = layers
            .into_iter()
            .find_map(|(key, v)| v.map(|v| (key, v)))?;
        self.choice(key, &text)
    }

    /// A socket address (`ip:port`), or a problem naming `key`.
    pub fn socket_addr(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        text.parse()
            .map_err(|e| self.push(format!("{key} {text:?}: {e} (expected ip:port)")))
            .ok()
    }

    /// The variable `name` parsed as a `T`; a problem naming the variable if it does not parse.
    pub fn env<T>(&mut self, env: &dyn Env, name: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        env.var(name).and_then(|v| self.parse(name, &v))
    }

    /// The variable `name` as a yes/no switch (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`).
    pub fn env_switch(&mut self, env: &dyn Env, name: &str) -> Option<bool> {
        let text = env.var(name)?;
        match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => {
                self.push(format!(
                    "{name} {text:?}: expected true or false (or 1/0, yes/no, on/off)"
                ));
                None
            }
        }
    }

    /// `value` if it is at least `min`; otherwise a problem naming `key` (and `min`,
    /// returned so that resolution can go on to find the other problems).
    pub fn at_least<T: PartialOrd + Display + Copy>(&mut self, key: &str, value: T, min: T) -> T {
        if value < min {
            self.report(key, format_args!("{value} is below the minimum, {min}"));
            return min;
        }
        value
    }

    /// The variable `name`, or one of the names it had before (`old`, for one release):
    /// then a notice says which to set instead.
    pub fn var_renamed(&mut self, env: &dyn Env, name: &str, old: &[&str]) -> Option<String> {
        if let Some(v) = env.var(name) {
            return Some(v);
        }
        let (was, v) = old.iter().find_map(|o| env.var(o).map(|v| (*o, v)))?;
        self.1.push(format!(
            "{was} is deprecated and will be ignored in the next release: set {name}"
        ));
        Some(v)
    }

    /// The notices recorded (deprecations), in order.
    pub fn notices(&self) -> &[String] {
        &self.1
    }

    /// No problems so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, or the value `build` makes when there are none. `build` returning
    /// `None` with no problem recorded is a bug in the caller; it is reported as such
    /// rather than hidden.
    /// Notices are printed to stderr (`warning: …`): they do not stop the program.
    pub fn finish<T>(self, build: impl FnOnce() -> Option<T>) -> Result<T, Vec<String>> {
        for n in &self.1 {
            eprintln!("warning: {n}");
        }
        if !self.0.is_empty() {
            return Err(self.0);
        }
        build().ok_or_else(|| vec!["invalid configuration (no detail recorded)".into()])
    }

    /// The problems recorded, in order.
    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

/// `T`'s choices for a message: "a, b or c".
pub fn choices<T: ValueEnum>() -> String {
    let names: Vec<String> = T::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value())
        .filter(|p| !p.is_hide_set())
        .map(|p| p.get_name().to_string())
        .collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The first value given, from the highest layer down: flag, environment, file.
pub fn first<T>(layers: impl IntoIterator<Item = Option<T>>) -> Option<T> {
    layers.into_iter().flatten().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
    enum Mode {
        Auto,
        Always,
        #[value(alias = "no")]
        Never,
    }

    #[test]
    fn choices_are_parsed_with_aliases_and_listed_when_wrong() {
        let mut p = Problems::new();
        assert_eq!(p.choice::<Mode>("x.mode", "always"), Some(Mode::Always));
        assert_eq!(p.choice::<Mode>("x.mode", "no"), Some(Mode::Never));
        assert!(p.is_empty());
        assert_eq!(p.choice::<Mode>("x.mode", "sometimes"), None);
        assert_eq!(
            p.into_vec(),
            ["x.mode \"sometimes\": expected auto, always or never"]
        );
    }

    #[test]
    fn environment_values_are_checked_not_dropped() {
        let env = &[("PORT", "54x"), ("ON", "yes"), ("EMPTY", "")];
        let mut p = Problems::new();
        assert_eq!(p.env::<u16>(env, "PORT"), None);
        assert_eq!(p.env_switch(env, "ON"), Some(true));
        assert_eq!(p.env::<u16>(env, "EMPTY"), None);
        assert_eq!(p.env::<u16>(env, "UNSET"), None);
        let all = p.into_vec();
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(all[0].starts_with("PORT \"54x\": invalid digit"), "{all:?}");
    }

    #[test]
    fn the_first_layer_given_is_the_one_checked() {
        let mut p = Problems::new();
        let got: Option<Mode> = p.first_choice([
            ("--mode", None),
            ("MODE", Some("never".into())),
            ("x.mode", Some("bogus".into())),
        ]);
        assert_eq!(got, Some(Mode::Never));
        assert!(p.is_empty(), "lower layers are not read");
        let got: Option<Mode> = p.first_choice([("--mode", Some("bogus".into()))]);
        assert_eq!(got, None);
        assert_eq!(
            p.into_vec(),
            ["--mode \"bogus\": expected auto, always or never"]
        );
    }

    #[test]
    fn below_the_minimum_is_an_error_not_a_clamp() {
        let mut p = Problems::new();
        assert_eq!(p.at_least("limits.x_secs", 5u64, 1), 5);
        assert!(p.is_empty());
        p.at_least("limits.x_secs", 0u64, 1);
        assert_eq!(p.into_vec(), ["limits.x_secs: 0 is below the minimum, 1"]);
    }

    #[test]
    fn finish_returns_every_problem() {
        let mut p = Problems::new();
        p.socket_addr("listen", "nope");
        p.report("a", "bad");
        let errors = p.finish(|| Some(())).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert!(errors[0].contains("(expected ip:port)"));
    }

    #[test]
    fn a_renamed_variable_is_read_by_its_old_name_with_a_notice() {
        let mut p = Problems::new();
        let env = &[("OLD_URL", "http://x"), ("NEW_ONLY", "y")];
        assert_eq!(
            p.var_renamed(env, "NEW_ONLY", &["OLD_ONLY"]),
            Some("y".into())
        );
        assert!(p.notices().is_empty());
        assert_eq!(
            p.var_renamed(env, "NEW_URL", &["OLD_URL"]),
            Some("http://x".into())
        );
        assert_eq!(
            p.notices(),
            ["OLD_URL is deprecated and will be ignored in the next release: set NEW_URL"]
        );
        assert!(p.is_empty(), "a notice is not a problem");
        assert_eq!(p.var_renamed(env, "NONE", &["ALSO_NONE"]), None);
    }

    #[test]
    fn the_highest_layer_wins() {
        assert_eq!(first([None, Some(2), Some(3)]), Some(2));
        assert_eq!(first::<u8>([None, None]), None);
    }
}

/// What an unknown key's message offers when no known key is close to it (a typo gets
/// "did you mean" either way).
#[derive(Debug, Clone, Copy)]
pub enum UnknownKeyHint<'a> {
    /// The keys the table has.
    KnownKeys,
    /// A fixed sentence (e.g. where the keys are documented).
    Text(&'a str),
}

/// A TOML file as a `T`, with every key `T` accepts: each key it refuses (unknown, or a
/// value of the wrong type) is a problem naming the file and the key, and is left out,
/// so that one run names every bad key, not only the first (and the other layers,
/// environment and flags, are checked too).
pub fn read_toml<T: serde::de::DeserializeOwned + Default>(
    path: &std::path::Path,
    hint: UnknownKeyHint<'_>,
) -> (T, Vec<String>) {
    let shown = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return (T::default(), vec![format!("{shown}: {e}")]),
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            let at = e
                .span()
                .map(|s| {
                    let before = &text.as_bytes()[..s.start.min(text.len())];
                    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
                    format!(" line {line}:")
                })
                .unwrap_or_default();
            return (T::default(), vec![format!("{shown}:{at} {}", e.message())]);
        }
    };
    let mut problems = Vec::new();
    let kept = keep_accepted::<T>(&mut Vec::new(), table, hint, &mut problems);
    let mut problems: Vec<String> = problems
        .into_iter()
        .map(|p| format!("{shown}: {p}"))
        .collect();
    match toml::Value::Table(kept).try_into::<T>() {
        Ok(t) => (t, problems),
        Err(e) => {
            problems.push(format!("{shown}: {}", e.message()));
            (T::default(), problems)
        }
    }
}

/// The keys of `table` (at `path` in the file) that `T` accepts, each tried alone; a
/// table whose keys are known is searched key by key, an array element by element.
fn keep_accepted<T: serde::de::DeserializeOwned>(
    path: &mut Vec<String>,
    table: toml::Table,
    hint: UnknownKeyHint<'_>,
    problems: &mut Vec<String>,
) -> toml::Table {
    // `value` at `path`, alone in a document: does `T` take it?
    let accepts = |path: &[String], value: toml::Value| -> Result<(), String> {
        let mut doc = value;
        for key in path.iter().rev() {
            doc = toml::Value::Table(toml::Table::from_iter([(key.clone(), doc)]));
        }
        doc.try_into::<T>()
            .map(|_| ())
            .map_err(|e| explain(e.message(), hint))
    };
    let mut kept = toml::Table::new();
    for (key, value) in table {
        path.push(key.clone());
        match accepts(path, value.clone()) {
            Ok(()) => {
                kept.insert(key, value);
            }
            Err(problem) => match value {
                toml::Value::Table(inner)
                    if accepts(path, toml::Value::Table(toml::Table::new())).is_ok() =>
                {
                    let inner = keep_accepted::<T>(path, inner, hint, problems);
                    kept.insert(key, toml::Value::Table(inner));
                }
                toml::Value::Array(items)
                    if accepts(path, toml::Value::Array(Vec::new())).is_ok() =>
                {
                    let mut good = Vec::new();
                    for (i, item) in items.into_iter().enumerate() {
                        match accepts(path, toml::Value::Array(vec![item.clone()])) {
                            Ok(()) => good.push(item),
                            Err(problem) => {
                                problems.push(format!("{}[{i}]: {problem}", path.join(".")));
                            }
                        }
                    }
                    kept.insert(key, toml::Value::Array(good));
                }
                _ => problems.push(format!("{}: {problem}", path.join("."))),
            },
        }
        path.pop();
    }
    kept
}

/// serde's "unknown field `x`, expected one of `a`, `b`" as "unknown key", with the
/// nearest known key when one is close (a typo), else `hint`; other messages as they are.
fn explain(message: &str, hint: UnknownKeyHint<'_>) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let mut names = rest.split('`').step_by(2);
    let given = names.next().unwrap_or_default();
    let known: Vec<&str> = names.collect();
    let nearest = known
        .iter()
        .map(|n| (edit_distance(given, n), *n))
        .min()
        .filter(|(d, _)| *d <= 2.max(given.len() / 4));
    match (nearest, hint) {
        (Some((_, n)), _) => format!("unknown key (did you mean `{n}`?)"),
        (None, UnknownKeyHint::KnownKeys) => {
            format!("unknown key (the keys here: {})", known.join(", "))
        }
        (None, UnknownKeyHint::Text(text)) => format!("unknown key ({text})"),
    }
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Settings shown to an operator (`config check`): `key = value` lines in TOML's syntax,
/// secrets only as [`SET`] or [`UNSET`].
pub mod shown {
    use std::fmt::Display;
    use std::path::Path;

    /// What a secret that is set shows.
    pub const SET: &str = "<set>";
    /// What an unset setting shows.
    pub const UNSET: &str = "<unset>";

    /// `key = value` lines under `[table]` headers or `# section` comments.
    #[derive(Debug, Default)]
    pub struct Lines(String);

    impl Lines {
        /// A `[name]` table header (a blank line before all but the first).
        pub fn table(&mut self, name: &str) {
            if !self.0.is_empty() {
                self.0.push('\n');
            }
            self.0.push_str(&format!("[{name}]\n"));
        }

        /// A `# name` section heading after a blank line.
        pub fn section(&mut self, name: &str) {
            self.0.push('\n');
            self.comment(name);
        }

        /// A `# text` line.
        pub fn comment(&mut self, text: &str) {
            self.0.push_str(&format!("# {text}\n"));
        }

        /// `key = value`.
        pub fn kv(&mut self, key: &str, value: impl Display) {
            self.0.push_str(&format!("{key} = {value}\n"));
        }

        /// `key = value  # note`.
        pub fn note(&mut self, key: &str, value: impl Display, note: &str) {
            self.0.push_str(&format!("{key} = {value}  # {note}\n"));
        }

        /// A secret: [`SET`] with where it came from, or [`UNSET`].
        pub fn secret(&mut self, key: &str, from: Option<&str>) {
            match from {
                Some(from) => self.note(key, SET, from),
                None => self.kv(key, UNSET),
            }
        }

        /// The text.
        pub fn finish(self) -> String {
            self.0
        }
    }

    /// A TOML string.
    pub fn quote(s: &str) -> String {
        toml::Value::String(s.to_string()).to_string()
    }

    /// A path as a TOML string.
    pub fn quote_path(p: &Path) -> String {
        quote(&p.display().to_string())
    }

    /// A path as a TOML string, or [`UNSET`].
    pub fn path_or_unset(p: Option<&Path>) -> String {
        p.map_or_else(|| UNSET.into(), quote_path)
    }

    /// A TOML array of strings.
    pub fn list<S: ToString>(items: impl IntoIterator<Item = S>) -> String {
        toml::Value::Array(
            items
                .into_iter()
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        )
        .to_string()
    }

    /// A URL (or path), quoted, with any user and password in it as [`SET`].
    pub fn url(u: &str) -> String {
        let shown = match u.split_once("://") {
            Some((scheme, rest)) => {
                let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                match rest[..authority_end].rfind('@') {
                    Some(at) => format!("{scheme}://{SET}@{}", &rest[at + 1..]),
                    None => u.to_string(),
                }
            }
            None => u.to_string(),
        };
        quote(&shown)
    }

    #[cfg(test)]
    mod tests {
        use super::url;

        #[test]
        fn credentials_in_urls_are_not_shown() {
            assert_eq!(
                url("https://user:hunter2@pccs.example:8081/sgx/certification/v4/"),
                "\"https://<set>@pccs.example:8081/sgx/certification/v4/\""
            );
            assert_eq!(
                url("https://pccs.example/a@b"),
                "\"https://pccs.example/a@b\""
            );
            assert_eq!(url("/run/dstack.sock"), "\"/run/dstack.sock\"");
        }
    }
}
