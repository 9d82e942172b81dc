//! What both hops' configurations share: one declaration per setting ([`ConfigArgs`]: a
//! config struct's fields are its TOML keys and its flags, its `Default` the defaults), reading
//! a TOML file with unknown keys named, the errors a config can have, and the checks on limits
//! and times that must be above zero.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command, FromArgMatches};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a configuration cannot be used. Each hop's `resolve` returns the variants that apply
/// to it; the text is what a user sees.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this config (names the key).
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's words.
        message: String,
    },
    /// A limit or time that must be above zero.
    #[error("{0} must be above zero")]
    Zero(&'static str),
    /// Edge: no gateway address.
    #[error("no gateway address: give --gateway HOST:PORT (TOML: gateway)")]
    NoGateway,
    /// Edge: the gateway address is not `HOST:PORT`.
    #[error("gateway {0:?} is not HOST:PORT")]
    BadGateway(String),
    /// An edge id a gateway would refuse.
    #[error("edge_id {0:?}: {1}")]
    BadEdgeId(String, String),
    /// Edge: neither `--ca` nor `--pin`, or both.
    #[error("give exactly one of --ca FILE or --pin sha256:HEX to trust the gateway")]
    NoTrust,
    /// Edge: the pin is not `sha256:` and 64 hex digits.
    #[error("pin: {0}")]
    BadPin(rtmpq_certs::CertError),
    /// Edge: a client certificate without its key, or the reverse.
    #[error("client_cert and client_key go together")]
    HalfClientIdentity,
    /// Gateway: the QUIC-LB server id is not 1 to 15 bytes of hex.
    #[error("server_id {0:?} is not 1 to 15 bytes of hex (e.g. \"c4605e\")")]
    BadServerId(String),
    /// Gateway: the origin URL is not `rtmp://HOST[:PORT]`.
    #[error("origin {0:?} is not rtmp://HOST[:PORT]")]
    BadOrigin(String),
    /// Gateway: mutual TLS without a CA to check edges against.
    #[error("client_auth needs a cert dir with ca.pem (--cert-dir, TOML: cert_dir)")]
    ClientAuthWithoutCa,
    /// Edge: a back-pressure threshold the budget never lets the queue reach.
    #[error("backpressure_ms ({0}) must be under latency_budget_ms ({1}): past the budget media is dropped, so the pusher would never feel it")]
    BackpressureAboveBudget(u64, u64),
    /// Gateway: `[[edge]]` tables that cannot be applied.
    #[error("{0}")]
    Access(String),
    /// Gateway: an empty token would let any edge in.
    #[error("tokens must not be empty strings")]
    EmptyToken,
    /// A flag's value does not fit its key.
    #[error("{0}")]
    Flag(String),
}

/// A hop's command line, declared by its config struct `C`: `--config FILE` and one flag per
/// field `C` marks with `#[arg(long)]` (none required; each help ends with `C::default()`'s
/// value). [`ConfigArgs::load`] reads the file (or takes the defaults) and applies every flag
/// given over it, so each setting is declared once: the field, its doc, its default.
#[derive(Debug, Clone)]
pub struct ConfigArgs<C> {
    /// The TOML file, if given.
    pub file: Option<PathBuf>,
    matches: ArgMatches,
    config: PhantomData<C>,
}

impl<C> ConfigArgs<C> {
    /// Whether flag `id` (the field's name) was given on the command line.
    pub fn given(&self, id: &str) -> bool {
        self.matches.try_contains_id(id).unwrap_or(false)
    }
}

impl<C: FromArgMatches + DeserializeOwned + Default> ConfigArgs<C> {
    /// The config: the file's keys (or the defaults), then every flag given over them.
    pub fn load(&self) -> Result<C, ConfigError> {
        let mut config = match &self.file {
            Some(path) => load_toml(path)?,
            None => C::default(),
        };
        config
            .update_from_arg_matches(&self.matches)
            .map_err(|e| ConfigError::Flag(e.to_string()))?;
        Ok(config)
    }
}

impl<C> FromArgMatches for ConfigArgs<C> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(ConfigArgs {
            file: matches.get_one::<PathBuf>(CONFIG_FLAG).cloned(),
            matches: matches.clone(),
            config: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl<C: clap::Args + Serialize + Default> clap::Args for ConfigArgs<C> {
    fn augment_args(cmd: Command) -> Command {
        let defaults = toml::Table::try_from(C::default()).unwrap_or_default();
        let file = Arg::new(CONFIG_FLAG)
            .long(CONFIG_FLAG)
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("TOML config file; flags override it");
        C::augment_args(cmd.arg(file)).mut_args(|arg| flag_over_file(arg, &defaults))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// The flag naming the config file.
const CONFIG_FLAG: &str = "config";

/// A config field's flag as it goes over a file: never required, present only when given (a
/// switch too: `--standby` absent leaves the file's `standby = true`), its help ending with
/// the default from `defaults` (the config's `Default`, as TOML).
fn flag_over_file(arg: Arg, defaults: &toml::Table) -> Arg {
    let mut arg = arg.required(false);
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        // A switch sets `true` when given (`--standby=false` also works), else nothing: clap's
        // own switch would always say `false` and hide the file's `true`.
        arg = arg
            .action(ArgAction::Set)
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true");
    }
    let default = match defaults.get(arg.get_id().as_str()) {
        Some(toml::Value::String(s)) => s.clone(),
        Some(toml::Value::Array(a)) if a.is_empty() => return arg,
        Some(toml::Value::Boolean(false)) => return arg,
        Some(v) => v.to_string(),
        None => return arg,
    };
    let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
    let long = arg.get_long_help().map(|h| h.to_string());
    let arg = arg.help(format!("{help} [default: {default}]"));
    match long {
        Some(long) => arg.long_help(format!("{long}\n\n[default: {default}]")),
        None => arg,
    }
}

/// Reads a TOML file into `T` (a config struct with `deny_unknown_fields`).
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_toml(&text, path)
}

/// Parses TOML `text` into `T`; `path` names where it came from in the error.
pub fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })
}

/// `ms` milliseconds, refused when zero (named by its TOML `key`).
pub fn millis(ms: u64, key: &'static str) -> Result<Duration, ConfigError> {
    match ms {
        0 => Err(ConfigError::Zero(key)),
        ms => Ok(Duration::from_millis(ms)),
    }
}

/// `n`, refused when zero (named by its TOML `key`).
pub fn above_zero(n: usize, key: &'static str) -> Result<usize, ConfigError> {
    match n {
        0 => Err(ConfigError::Zero(key)),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A config as the hops declare theirs.
    #[derive(Debug, Clone, PartialEq, serde::Deserialize, Serialize, clap::Args)]
    #[serde(deny_unknown_fields, default)]
    struct Knobs {
        /// A budget, ms.
        #[arg(long = "budget-ms", visible_alias = "budget")]
        budget_ms: u64,
        /// A switch.
        #[arg(long)]
        standby: bool,
        /// A list.
        #[arg(long = "peer")]
        peer: Vec<String>,
        /// Not a flag.
        #[arg(skip)]
        hidden: u32,
    }

    impl Default for Knobs {
        fn default() -> Self {
            Knobs {
                budget_ms: 1000,
                standby: false,
                peer: Vec::new(),
                hidden: 7,
            }
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConfigArgs<Knobs>,
    }

    fn load(file: Option<&str>, flags: &[&str]) -> Knobs {
        let dir = tempfile::tempdir().unwrap();
        let mut argv = vec!["test".to_owned()];
        if let Some(text) = file {
            let path = dir.path().join("k.toml");
            std::fs::write(&path, text).unwrap();
            argv.extend(["--config".to_owned(), path.display().to_string()]);
        }
        argv.extend(flags.iter().map(|f| f.to_string()));
        Cli::try_parse_from(argv).unwrap().args.load().unwrap()
    }

    #[test]
    fn flags_go_over_the_file_and_the_file_over_the_defaults() {
        assert_eq!(load(None, &[]), Knobs::default());
        let file = "budget_ms = 200\nstandby = true\npeer = [\"a\", \"b\"]\nhidden = 9";
        let from_file = load(Some(file), &[]);
        // A switch not given leaves the file's value; so does every other flag.
        assert_eq!(
            from_file,
            Knobs {
                budget_ms: 200,
                standby: true,
                peer: vec!["a".into(), "b".into()],
                hidden: 9,
            }
        );
        let flagged = load(Some(file), &["--budget", "50", "--peer", "c"]);
        assert_eq!((flagged.budget_ms, flagged.standby), (50, true));
        assert_eq!(flagged.peer, ["c"], "a list flag replaces the file's list");
        let switched = load(None, &["--standby", "--budget-ms", "5"]);
        assert_eq!((switched.budget_ms, switched.standby), (5, true));
        assert!(!load(Some(file), &["--standby=false"]).standby);
    }

    #[test]
    fn help_shows_each_default_once_declared() {
        let mut cmd = Cli::command_for_test();
        let help = cmd.render_help().to_string();
        assert!(help.contains("A budget, ms [default: 1000]"), "{help}");
        assert!(help.contains("--config <FILE>"), "{help}");
        assert!(!help.contains("hidden"), "{help}");
    }

    impl Cli {
        fn command_for_test() -> Command {
            <Cli as clap::CommandFactory>::command()
        }
    }
}
