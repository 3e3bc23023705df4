//! The `event-router` binary: argument parsing only.
//!
//! Each subcommand's arguments and behaviour live in `cli/<subcommand>.rs`;
//! this file maps the command line onto them and turns an error into a
//! message on stderr and a non-zero exit code.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: events are many small,
/// short-lived allocations freed on other threads than the ones that made
/// them, where glibc's malloc spent about a third of the router's CPU time
/// (`event-router bench`, docs/benchmarks.md).
///
/// Built without transparent huge pages (`no_thp`), and [`main`] turns them
/// off for the process: mimalloc returns freed memory to the OS in small
/// pieces and takes it back on demand, and with huge pages every take-back
/// zeroed a whole 2 MiB page. `perf` put that zeroing at 17 % of the
/// router's CPU and up to half of the bench client's on the Redis durable
/// path (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Routes events between AI agents and services: topic patterns, content
/// filters, priorities, live and durable (acked, retried, dead-lettered)
/// delivery over WebSocket, HTTP, SSE and CloudEvents.
#[derive(Debug, Parser)]
#[command(
    name = "event-router",
    version,
    propagate_version = true,
    after_help = "Examples:\n  \
        event-router serve                                # router on :8080, in-memory broker\n  \
        event-router publish task.created '{\"id\":42}'     # publish one event\n  \
        event-router tail 'task.*'                         # print matching events as they arrive\n  \
        event-router status                               # health, counters, subscriptions\n  \
        event-router export --output events.jsonl          # retained events as JSON lines\n\n\
        Client commands talk to --url (env EVENT_ROUTER_URL, default http://127.0.0.1:8080).\n\
        Protocol reference: docs/protocol.md. Configuration: docs/configuration.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Serve(cli::serve::ServeArgs),
    Publish(cli::publish::PublishArgs),
    #[command(visible_alias = "monitor")]
    Tail(cli::tail::TailArgs),
    Status(cli::status::StatusArgs),
    Dlq(cli::dlq::DlqArgs),
    Replay(cli::replay::ReplayArgs),
    Export(cli::export::ExportArgs),
    Purge(cli::purge::PurgeArgs),
    Bench(cli::bench::BenchArgs),
    Apply(cli::apply::ApplyArgs),
    Auth(cli::auth::AuthArgs),
    Crd(cli::crd::CrdArgs),
    Operator(cli::operator::OperatorArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    // A refusal (a sandbox without prctl) only costs speed; see GLOBAL.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(args).await,
        Command::Publish(args) => cli::publish::run(args).await,
        Command::Tail(args) => cli::tail::run(args).await,
        Command::Status(args) => cli::status::run(args).await,
        Command::Dlq(args) => cli::dlq::run(args).await,
        Command::Replay(args) => cli::replay::run(args).await,
        Command::Export(args) => cli::export::run(args).await,
        Command::Purge(args) => cli::purge::run(args).await,
        Command::Bench(args) => cli::bench::run(args).await,
        Command::Apply(args) => cli::apply::run(args).await,
        Command::Auth(args) => cli::auth::run(args),
        Command::Crd(args) => cli::crd::run(args).await,
        Command::Operator(args) => cli::operator::run(args).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
