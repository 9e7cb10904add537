//! The `switchboard` binary: parse flags, set up logs, run the server or a CLI command.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchboard::auth::{mint_token, now_secs, MintClaims};
use switchboard::cli::ApiClient;
use switchboard::config::{LogFormat, NamespaceConfig};
use switchboard::Config;

#[derive(Parser)]
#[command(name = "switchboard", version, about = "Self-hosted real-time gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// TOML configuration file.
    #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
}

/// How CLI commands reach a running server's API.
#[derive(clap::Args, Clone)]
struct ApiTarget {
    /// Configuration file to read the API key and `bind` from (else SWITCHBOARD_* variables).
    #[command(flatten)]
    common: Common,
    /// Server URL [default: http:// and the configured `bind`].
    #[arg(long, env = "SWITCHBOARD_URL")]
    url: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (the default).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on (overrides config and SWITCHBOARD_BIND).
        #[arg(long)]
        bind: Option<String>,
        /// Local development: open `chat` namespace, debug logs, print a token.
        #[arg(long)]
        dev: bool,
    },
    /// Mint a connection (or, with --channel, subscription) token with the configured HMAC secret.
    Token {
        #[command(flatten)]
        common: Common,
        /// User id (`sub`).
        #[arg(long, short)]
        user: String,
        /// Roles, comma-separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Public info, as JSON.
        #[arg(long)]
        info: Option<String>,
        /// Lifetime in seconds (0: never expires).
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Make a subscription token for this channel.
        #[arg(long)]
        channel: Option<String>,
    },
    /// Publish JSON data into a channel through a running server's API.
    Publish {
        #[command(flatten)]
        target: ApiTarget,
        /// Channel, e.g. `user:42`.
        channel: String,
        /// Data, as JSON, e.g. '{"text":"hi"}'.
        data: String,
    },
    /// Show a running server's node info.
    Info {
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Show the connections present in a channel.
    Presence {
        #[command(flatten)]
        target: ApiTarget,
        /// Channel.
        channel: String,
    },
    /// Check the configuration (file, SWITCHBOARD_* variables, the TLS certificate and
    /// key): print the effective configuration with secrets redacted, or every error and
    /// exit non-zero.
    CheckConfig {
        #[command(flatten)]
        common: Common,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Cmd::Serve {
        common: Common { config: None },
        bind: None,
        dev: false,
    });
    match command {
        Cmd::Serve { common, bind, dev } => serve(&common, bind, dev),
        Cmd::Token {
            common,
            user,
            roles,
            tenant,
            info,
            ttl,
            channel,
        } => {
            let config = Config::load(common.config.as_deref(), &[])?;
            anyhow::ensure!(
                !config.token_hmac_secret.is_empty(),
                "no token_hmac_secret configured (set SWITCHBOARD_TOKEN_HMAC_SECRET or use --config)"
            );
            let info = info
                .map(|i| serde_json::from_str(&i))
                .transpose()
                .context("--info must be JSON")?;
            let claims = MintClaims {
                sub: user,
                exp: (ttl > 0).then(|| now_secs() + ttl),
                roles,
                tenant,
                info,
                channel,
                ..MintClaims::default()
            };
            print_stdout(&mint_token(&config.token_hmac_secret, &claims)?)
        }
        Cmd::Publish {
            target,
            channel,
            data,
        } => {
            let data: serde_json::Value = serde_json::from_str(&data)
                .context("DATA must be JSON, e.g. '{\"text\":\"hi\"}'")?;
            api_command(&target, |c| async move { c.publish(&channel, data).await })
        }
        Cmd::Info { target } => api_command(&target, |c| async move { c.info().await }),
        Cmd::Presence { target, channel } => {
            api_command(&target, |c| async move { c.presence(&channel).await })
        }
        Cmd::CheckConfig { common } => {
            let config = Config::load(common.config.as_deref(), &[])?;
            if config.tls.enabled() {
                switchboard::tls::Tls::load(&config.tls)?;
            }
            let text = toml::to_string(&config.redacted()).context("printing the configuration")?;
            print_stdout(text.trim_end())
        }
    }
}

/// Prints `text` and a newline on stdout. A reader that went away (`| head -c1`) ends
/// the output quietly: Rust ignores SIGPIPE, so `println!` would panic on EPIPE.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("writing to stdout"),
    }
}

/// Runs one API call against `target` and prints its result as JSON.
fn api_command<F, Fut>(target: &ApiTarget, call: F) -> anyhow::Result<()>
where
    F: FnOnce(ApiClient) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, switchboard::cli::CliError>>,
{
    let config = Config::load(target.common.config.as_deref(), &[])?;
    let key = config
        .api_keys()
        .next()
        .context("no API key: set SWITCHBOARD_API_KEY or api_key in the --config file")?;
    let url = target
        .url
        .clone()
        .unwrap_or_else(|| switchboard::cli::url_of_bind(&config.bind));
    let client = ApiClient::new(&url, key);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(call(client))?;
    print_stdout(&serde_json::to_string_pretty(&result)?)
}

fn serve(common: &Common, bind: Option<String>, dev: bool) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    if let Some(b) = bind {
        overrides.push(("bind", b));
    }
    let mut config = Config::load(common.config.as_deref(), &overrides)?;
    init_tracing(&config, dev);
    if dev {
        config
            .namespaces
            .entry("chat".into())
            .or_insert(NamespaceConfig {
                subscribe: vec!["*".into()],
                publish: true,
                presence: true,
                join_leave: true,
                history_size: 100,
                history_ttl: Duration::from_secs(3600),
                ..NamespaceConfig::default()
            });
    }
    if !config.has_token_key() {
        config.token_hmac_secret = random_secret();
        tracing::warn!(
            secret = %config.token_hmac_secret,
            "no token key configured: using an ephemeral HMAC secret for this run only; set SWITCHBOARD_TOKEN_HMAC_SECRET"
        );
        print_dev_token(&config, "demo");
    } else if dev && !config.token_hmac_secret.is_empty() {
        print_dev_token(&config, "dev");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        switchboard::run(config, shutdown_signal()).await?;
        Ok(())
    })
}

fn print_dev_token(config: &Config, user: &str) {
    let claims = MintClaims {
        sub: user.into(),
        exp: Some(now_secs() + 24 * 3600),
        ..MintClaims::default()
    };
    if let Ok(t) = mint_token(&config.token_hmac_secret, &claims) {
        // Not eprintln!: it panics when stderr is gone.
        let _ = writeln!(std::io::stderr(), "token for user {user:?} (24h): {t}");
    }
}

fn random_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn init_tracing(config: &Config, dev: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if dev {
        "switchboard=debug,info"
    } else {
        "info"
    };
    let filter =
        EnvFilter::try_from_env("SWITCHBOARD_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: logs piped to a file or collector stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        // A failed log write must not be reported on stderr again: with stderr gone (its
        // reader died), that report panics the task that logged.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    if config.log_format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
