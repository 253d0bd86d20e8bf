//! `taskforge-bench`: load generator for the TaskForge server.
//!
//! Subcommands:
//! - `writes`: throughput and latency of `POST /api/v1/teams/{teamId}/tasks` (see `http_writes`).
//! - `summarize`: medians over repeated runs of `writes --json` output.
//!
//! See `bench/README.md` and `bench/http-writes.sh`.

mod http_writes;
mod procfs;
mod stats;
mod summary;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "taskforge-bench",
    version,
    about = "Benchmarks for the TaskForge server"
)]
struct Cli {
    /// Threads of the generator's async runtime (1: a single-threaded runtime, leaving the other
    /// cores to the server on a small machine)
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Throughput and latency of POST /api/v1/teams/{teamId}/tasks
    Writes(http_writes::WritesArgs),
    /// Medians over repeated runs, from `writes --json` lines
    Summarize(summary::SummarizeArgs),
}

/// Exit status of a `writes` run that finished but created no task at all.
const EXIT_NO_SUCCESS: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Summarize(args) => match summary::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("taskforge-bench summarize: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Writes(args) => {
            let threads = cli.threads.max(1);
            let runtime = if threads == 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .enable_all()
                    .build()
            };
            let runtime = match runtime {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("taskforge-bench: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(http_writes::run(args, threads)) {
                Ok(report) => {
                    if args.json {
                        println!(
                            "{}",
                            serde_json::to_string(&report).expect("report serializes")
                        );
                    } else {
                        http_writes::print_human(&report);
                    }
                    if report.ok == 0 {
                        eprintln!("taskforge-bench writes: no request succeeded");
                        return ExitCode::from(EXIT_NO_SUCCESS);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("taskforge-bench writes: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
