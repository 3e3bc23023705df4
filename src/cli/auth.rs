//! `event-router auth`: helpers for the auth file (docs/security.md).

use std::process::ExitCode;

use anyhow::anyhow;

/// Helpers for the auth file (`serve --auth FILE`).
#[derive(Debug, clap::Args)]
pub struct AuthArgs {
    #[command(subcommand)]
    command: AuthCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AuthCommand {
    /// Print a new random API key and the `sha256:` line for the auth file.
    ///
    /// The key goes to the agent (e.g. in a Kubernetes Secret); only its
    /// digest goes into the auth file.
    #[command(after_help = "Example:\n  event-router auth hash-key --name planner")]
    HashKey {
        /// Principal name for the printed api_keys entry.
        #[arg(long, default_value = "agent")]
        name: String,
    },
}

/// Runs the subcommand.
///
/// # Errors
/// When stdout is closed.
pub fn run(args: AuthArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AuthCommand::HashKey { name } => {
            let key = event_router::auth::generate_key();
            let digest = event_router::auth::sha256_hex(&key);
            let text = format!(
                "key: {key}\n# auth file entry:\napi_keys:\n  - name: {name}\n    sha256: \"{digest}\""
            );
            super::print_line(&text).map_err(|e| anyhow!("cannot write to stdout: {e}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
