//! The `taskforge` command: `serve` and `migrate`.

use std::io::IsTerminal;

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
    /// Apply the database migrations and exit.
    Migrate {
        #[arg(
            long,
            env = "TASKFORGE_DATABASE_URL",
            default_value = "sqlite://taskforge.db"
        )]
        database_url: String,
        #[arg(long, env = "TASKFORGE_LOG", default_value = "info")]
        log: String,
    },
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(config) => {
            init_logging(&config.log, config.log_format);
            taskforge::app::serve(*config).await?;
        }
        Command::Migrate { database_url, log } => {
            init_logging(&log, LogFormat::Text);
            taskforge::app::migrate(&database_url).await?;
        }
    }
    Ok(())
}
