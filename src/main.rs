//! The `taskforge` command: `serve` and `migrate`, and the client commands `login`, `tail` and
//! `import`.

mod cli;

use std::io::{BufRead, IsTerminal};

use clap::{Parser, Subcommand};
use taskforge::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "taskforge",
    version,
    about = "Team task tracker backend with a realtime activity stream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<Config>),
    /// Apply the database migrations and exit (over `TASKFORGE_MIGRATION_DATABASE_URL` when it is
    /// set: the database URL may be a transaction pooler, which cannot hold the migrator's lock).
    Migrate {
        #[arg(
            long,
            env = "TASKFORGE_DATABASE_URL",
            default_value = "sqlite://taskforge.db"
        )]
        database_url: String,
        #[arg(long, env = "TASKFORGE_MIGRATION_DATABASE_URL")]
        migration_database_url: Option<String>,
        #[arg(long, env = "TASKFORGE_LOG", default_value = "info")]
        log: String,
    },
    /// Log in to a server and keep the session (in the user's config dir, mode 0600) for `tail`.
    /// The password is prompted for, or read from the first line of standard input.
    Login {
        /// The server's base URL, e.g. http://127.0.0.1:8080.
        #[arg(long, env = "TASKFORGE_URL")]
        url: String,
        #[arg(long)]
        email: String,
    },
    /// Stream a team's activities (or a board's, or a task's), or with `--inbox` your
    /// notifications, to the terminal, resuming after disconnects.
    Tail(cli::tail::TailArgs),
    /// Import tasks into a team from a CSV file or a Trello, Jira or GitHub-issues JSON export,
    /// in batches; running it again after an interruption skips the rows already imported.
    Import(cli::import::ImportArgs),
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// jemalloc instead of the system malloc: its size-class slabs reuse the slots that closed
/// sockets free for the sockets that replace them, and it hands idle pages back to the kernel on
/// its own. With glibc's malloc, a 20-minute soak with churn (bench/soak.sh) grew RSS by ~11 %
/// over the first full turnover of the sockets before it levelled off.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its first allocation (`_RJEM_MALLOC_CONF` overrides them): a
/// background thread hands pages unused for a second back to the kernel, so that RSS follows the
/// live heap rather than past bursts (with the defaults, purging waits for allocations and lags
/// by minutes). A C string, as the symbol is read from C.
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
// The one unsafe item of the crate: a symbol jemalloc's C code reads by name (its type and
// NUL-terminated bytes are what that code expects).
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static _rjem_malloc_conf: &[u8] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// jemalloc's own accounting for `/metrics` (see `telemetry::ALLOCATOR_BYTES`). Its statistics
/// are a snapshot that advancing the epoch refreshes.
#[cfg(not(target_env = "msvc"))]
fn jemalloc_figures() -> Vec<(&'static str, u64)> {
    use tikv_jemalloc_ctl::{epoch, stats};
    if epoch::advance().is_err() {
        return Vec::new();
    }
    type Read = fn() -> tikv_jemalloc_ctl::Result<usize>;
    let reads: [(&'static str, Read); 4] = [
        ("allocated", stats::allocated::read),
        ("active", stats::active::read),
        ("resident", stats::resident::read),
        ("retained", stats::retained::read),
    ];
    reads
        .into_iter()
        .filter_map(|(kind, read)| read().ok().map(|bytes| (kind, bytes as u64)))
        .collect()
}

fn main() -> anyhow::Result<()> {
    #[cfg(not(target_env = "msvc"))]
    taskforge::telemetry::register_allocator_probe(jemalloc_figures);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(config) => {
            init_logging(&config.log, config.log_format);
            taskforge::app::serve(*config).await?;
        }
        Command::Migrate {
            database_url,
            migration_database_url,
            log,
        } => {
            init_logging(&log, LogFormat::Text);
            taskforge::app::migrate(migration_database_url.as_deref().unwrap_or(&database_url))
                .await?;
        }
        Command::Login { url, email } => {
            let password = read_password()?;
            let auth = cli::login(&url, &email, &password).await?;
            let path = cli::credentials::store(
                &url,
                cli::credentials::Session {
                    email: email.clone(),
                    access_token: auth.access_token,
                    refresh_token: auth.refresh_token,
                },
            )?;
            eprintln!(
                "logged in to {url} as {email}; session saved in {}",
                path.display()
            );
        }
        Command::Tail(args) => cli::tail::run(args).await?,
        Command::Import(args) => cli::import::run(args).await?,
    }
    Ok(())
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        return Ok(rpassword::prompt_password("Password: ")?);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
