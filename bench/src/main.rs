//! `taskforge-bench`: load generator for the TaskForge server.
//!
//! Subcommands:
//! - `writes`: throughput and latency of `POST /api/v1/teams/{teamId}/tasks`, or of comments on
//!   a task with followers (see `http_writes`).
//! - `fanout`: delivery of `task.created` activities to many `/realtime` sockets (see `fanout`);
//!   `--server-kind` runs the same load against the Socket.IO peer or the bare-write floor,
//!   `--transport sse` over `/realtime/sse` streams (see `sse`).
//! - `connect`: many subscribed sockets held idle: connect cost and memory per socket.
//! - `compare`: TaskForge, the Socket.IO peer and the floor side by side (see `compare`).
//! - `transports`: the same fanout over WebSocket and over SSE side by side (see `transports`).
//! - `soak`: many sockets held under steady activity with churn, RSS sampled (see `soak`).
//! - `resume`: one socket replaying the activities it missed (`since`) (see `resume`).
//! - `summarize`: medians over repeated runs of `writes --json` / `fanout --json` output.
//! - `ratios`: variants of a `writes` benchmark against a base variant, round by round.
//! - `abuse`: hostile clients against a server it starts, while a normal user works (see `abuse`).
//! - `webhooks`: a webhook's deliveries to a receiver inside the generator: deliveries/s, lag at a
//!   steady write rate, catch-up after the receiver was down (see `webhooks`).
//! - `search`: filters, sorts and full-text search of the task list on large teams: setup, seed
//!   SQL, the latency table and the query plans (see `search`).
//! - `sqlite-writer`: a task creation's SQLite writes without HTTP, through the server's store and
//!   on one synchronous thread with rusqlite (see `sqlite_writer`).
//! - `relay-lag`: watches the activities the instances publish on Redis: each one's age at
//!   arrival, repeats and skips per team (see `redis_tap`, `bench/relay.sh`).
//!
//! See `bench/README.md`, `bench/http-writes.sh`, `bench/comment-notify.sh`, `bench/fanout.sh`, `bench/sse-fanout.sh`, `bench/cluster-fanout.sh`,
//! `bench/abuse.sh`, `bench/webhooks.sh` and `bench/search.sh`.

mod abuse;
mod arrival;
mod compare;
mod fanout;
mod floor;
mod http_writes;
mod procfs;
mod ratios;
mod redis_tap;
mod resume;
mod search;
mod search_data;
mod search_sql;
mod soak;
mod sqlite_writer;
mod sse;
mod stats;
mod summary;
mod team_watch;
mod transports;
mod webhooks;

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
    /// Throughput and latency of POST /api/v1/teams/{teamId}/tasks (or, with --write comment,
    /// of POST /api/v1/tasks/{taskId}/comments on a task with followers)
    Writes(http_writes::WritesArgs),
    /// Delivery of task.created activities to many WebSocket subscribers of one team
    Fanout(fanout::FanoutArgs),
    /// Opens and subscribes many sockets and holds them idle (`--hold`): connect time, server CPU
    /// per connect and RSS per idle socket. The options of `fanout`; no task is created
    Connect(fanout::FanoutArgs),
    /// Medians over repeated runs, from `writes --json` / `fanout --json` lines
    Summarize(summary::SummarizeArgs),
    /// Variants of a `writes` benchmark (labels VARIANT/MODE) against a base variant: medians and
    /// the median of the per-round ratios
    Ratios(ratios::RatiosArgs),
    /// TaskForge, the Socket.IO peer and the floor side by side (the `fanout --json` lines of
    /// bench/compare.sh): medians, ratios and the targets
    Compare(compare::CompareArgs),
    /// The same fanout over WebSocket and over SSE side by side (the `fanout --json` lines of
    /// bench/sse-fanout.sh): medians, and the SSE / WebSocket ratio of every round and its median
    Transports(transports::TransportsArgs),
    /// Sockets of one team held for minutes under steady activity and churn (resume); checks
    /// every socket's stream and samples the servers' RSS every minute (prints a JSON line)
    Soak(soak::SoakArgs),
    /// One socket resuming with `since` after missing many activities: replay time, order and
    /// completeness checks, server CPU per replayed activity
    Resume(resume::ResumeArgs),
    /// A bare server writing TaskForge's frames to its WebSocket subscribers, one write() per
    /// frame per socket: the kernel's own cost, to read the benchmark figures against
    Floor(floor::FloorArgs),
    /// A task creation's SQLite writes without HTTP: through the server's store (sqlx) and on
    /// one synchronous thread (rusqlite), alternated, on fresh files
    SqliteWriter(sqlite_writer::SqliteWriterArgs),
    /// Hostile clients (stalled replays, silent readers, huge or many log-ins, slow heads,
    /// password guessing, floods) against a fresh server per attack while a normal user works:
    /// the user's worst request and delivery times, the server's RSS, cuts and lost commits
    Abuse(abuse::AbuseArgs),
    /// A webhook delivering task.created to a receiver inside the generator: deliveries/s after
    /// a disabled stretch (drain), lag from commit to arrival at a steady rate (lag), backlog and
    /// catch-up after the receiver answered 503 for a while (outage)
    Webhooks(webhooks::WebhooksArgs),
    /// Filters, sorts and full-text search on large teams: `setup` (HTTP), `seed` (SQL on
    /// stdout), `run` (the latency table against the p99 target), `explain` (the query plans)
    Search(search::SearchArgs),
    /// Watches every team channel of a Redis for a while: each activity's age from its commit to
    /// its arrival, repeats and skips of each team's seqs (prints a JSON line)
    RelayLag(redis_tap::RelayLagArgs),
}

/// Exit status of a run that finished but created no task at all.
const EXIT_NO_SUCCESS: u8 = 3;
/// Exit status of a `fanout` run with lost, duplicate or unexpected deliveries, or cut sockets
/// (and of a `writes --write comment` run whose followers miss notifications).
const EXIT_DELIVERY_PROBLEMS: u8 = 4;

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Search(args) => run_search(args),
        Command::Summarize(args) => match summary::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("taskforge-bench summarize: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::SqliteWriter(args) => match sqlite_writer::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("taskforge-bench sqlite-writer: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Floor(args) => {
            if let Err(e) = fanout::raise_nofile_limit() {
                eprintln!("taskforge-bench: cannot raise the open files limit: {e}");
            }
            match floor::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("taskforge-bench floor: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Abuse(args) => {
            if let Err(e) = fanout::raise_nofile_limit() {
                eprintln!("taskforge-bench: cannot raise the open files limit: {e}");
            }
            let runtime = match runtime(cli.threads.max(1)) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("taskforge-bench: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let outcome = runtime.block_on(abuse::run(args));
            runtime.shutdown_background();
            match outcome {
                Ok(o) if o.not_run > 0 => {
                    eprintln!(
                        "taskforge-bench abuse: {} attack(s) could not run",
                        o.not_run
                    );
                    ExitCode::FAILURE
                }
                Ok(o) if o.reports.iter().any(abuse::AbuseReport::lost_data) => {
                    eprintln!(
                        "taskforge-bench abuse: committed tasks were lost (or could not be checked)"
                    );
                    ExitCode::from(EXIT_DELIVERY_PROBLEMS)
                }
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("taskforge-bench abuse: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ratios(args) => match ratios::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("taskforge-bench ratios: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Compare(args) => match compare::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("taskforge-bench compare: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Transports(args) => match transports::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("taskforge-bench transports: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::RelayLag(args) => {
            let run = async {
                let addr = redis_tap::parse_redis_addr(&args.redis)?;
                let window = std::time::Duration::from_secs_f64(args.duration.max(0.0));
                let kind = args.kind.as_deref();
                redis_tap::watch_activities(&addr, window, kind, std::time::Duration::from_secs(10))
                    .await
            };
            match runtime(1)
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(run))
            {
                Ok(mut report) => {
                    report.label = args.label.clone();
                    println!(
                        "{}",
                        serde_json::to_string(&report).expect("report serializes")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("taskforge-bench relay-lag: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Writes(args) => {
            let threads = cli.threads.max(1);
            let runtime = match runtime(threads) {
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
                    if report
                        .inbox
                        .as_ref()
                        .is_some_and(http_writes::InboxCheck::missing)
                    {
                        eprintln!(
                            "taskforge-bench writes: a follower has fewer notifications than comments created"
                        );
                        return ExitCode::from(EXIT_DELIVERY_PROBLEMS);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("taskforge-bench writes: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Webhooks(args) => {
            let threads = cli.threads.max(1);
            let runtime = match runtime(threads) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("taskforge-bench: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let outcome = runtime.block_on(webhooks::run(args, threads));
            // The receiver's connections end with the runtime.
            runtime.shutdown_background();
            match outcome {
                Ok(report) => {
                    if args.json {
                        println!(
                            "{}",
                            serde_json::to_string(&report).expect("report serializes")
                        );
                    } else {
                        webhooks::print_human(&report);
                    }
                    if report.created == 0 {
                        eprintln!("taskforge-bench webhooks: no task was created");
                        return ExitCode::from(EXIT_NO_SUCCESS);
                    }
                    if report.delivery_problems() {
                        eprintln!(
                            "taskforge-bench webhooks: {} of {} tasks not delivered{}{}",
                            report.lost,
                            report.created,
                            if report.timed_out {
                                ", the wait ran out"
                            } else {
                                ""
                            },
                            match report.bad_signatures {
                                Some(n) if n > 0 => format!(", {n} bad signatures"),
                                _ => String::new(),
                            }
                        );
                        return ExitCode::from(EXIT_DELIVERY_PROBLEMS);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("taskforge-bench webhooks: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Resume(args) => {
            let threads = cli.threads.max(1);
            let runtime = match runtime(threads) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("taskforge-bench: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(resume::run(args, threads)) {
                Ok(report) => {
                    runtime.shutdown_background();
                    if let Err(e) = resume::output(args, &report) {
                        eprintln!("taskforge-bench resume: {e:#}");
                        return ExitCode::FAILURE;
                    }
                    if report.delivery_problems() {
                        eprintln!(
                            "taskforge-bench resume: {} of {} run(s) went wrong (lost, duplicate, misordered or late activities, errors, cut socket or timeout)",
                            report.failed_runs, report.runs
                        );
                        return ExitCode::from(EXIT_DELIVERY_PROBLEMS);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("taskforge-bench resume: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Soak(args) => {
            if let Err(e) = fanout::raise_nofile_limit() {
                eprintln!("taskforge-bench: cannot raise the open files limit: {e}");
            }
            let runtime = match runtime(cli.threads.max(1)) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("taskforge-bench: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(soak::run(args)) {
                Ok(None) => ExitCode::SUCCESS,
                Ok(Some(report)) => {
                    println!(
                        "{}",
                        serde_json::to_string(&report).expect("report serializes")
                    );
                    runtime.shutdown_background();
                    if report.lost > 0 || report.duplicates > 0 {
                        eprintln!(
                            "taskforge-bench soak: {} lost, {} duplicated",
                            report.lost, report.duplicates
                        );
                        return ExitCode::from(EXIT_DELIVERY_PROBLEMS);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("taskforge-bench soak: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Fanout(args) | Command::Connect(args) => {
            let connect_only = matches!(cli.command, Command::Connect(_));
            let args = &fanout::FanoutArgs {
                events: if connect_only { 0 } else { args.events },
                ..args.clone()
            };
            let threads = cli.threads.max(1);
            if let Err(e) = fanout::raise_nofile_limit() {
                eprintln!("taskforge-bench: cannot raise the open files limit: {e}");
            }
            let runtime = match runtime(threads) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("taskforge-bench: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(fanout::run(args, threads)) {
                Ok(report) => {
                    if args.json {
                        println!(
                            "{}",
                            serde_json::to_string(&report).expect("report serializes")
                        );
                    } else {
                        fanout::print_human(&report);
                    }
                    // Dropping the runtime closes every socket without waiting for the server.
                    runtime.shutdown_background();
                    if args.events > 0 && report.created == 0 {
                        eprintln!("taskforge-bench fanout: no task was created");
                        return ExitCode::from(EXIT_NO_SUCCESS);
                    }
                    if report.delivery_problems() {
                        eprintln!(
                            "taskforge-bench fanout: deliveries went wrong (lost, duplicate, unexpected or cut sockets)"
                        );
                        return ExitCode::from(EXIT_DELIVERY_PROBLEMS);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("taskforge-bench fanout: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_search(args: &search::SearchArgs) -> ExitCode {
    let outcome = match &args.step {
        search::Step::Seed(a) => search::seed(a),
        search::Step::Explain(a) => search::explain(a),
        search::Step::Setup(a) => runtime(1)
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(search::setup(a)).map(|_| ())),
        search::Step::Run(a) => runtime(1)
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(search::run(a)))
            .map(|report| search::print_table(&report)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskforge-bench search: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_takes_several_urls_and_pids() {
        let cli = Cli::try_parse_from([
            "taskforge-bench",
            "fanout",
            "--url",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--url",
            "http://127.0.0.1:3",
            "--server-pid",
            "10,11",
            "--server-pid",
            "12",
        ])
        .unwrap();
        let Command::Fanout(a) = cli.command else {
            panic!("not fanout")
        };
        assert_eq!(a.urls.len(), 3);
        assert_eq!(a.urls[2], "http://127.0.0.1:3");
        assert_eq!(a.server_pids, vec![10, 11, 12]);
        let cli =
            Cli::try_parse_from(["taskforge-bench", "fanout", "--url", "http://h:8080"]).unwrap();
        let Command::Fanout(a) = cli.command else {
            panic!("not fanout")
        };
        assert_eq!(a.urls, vec!["http://h:8080".to_string()]);
        assert!(a.server_pids.is_empty() && a.redis.is_none());
        assert!(Cli::try_parse_from(["taskforge-bench", "fanout"]).is_err());
    }
}
