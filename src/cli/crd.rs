//! `event-router crd`: print the CustomResourceDefinitions.

use std::process::ExitCode;

use anyhow::anyhow;

/// Print the Subscription and EventRoute CustomResourceDefinitions as YAML.
///
/// The output is what `crd/eventrouter.dev.yaml` holds; install the CRDs
/// with `event-router crd | kubectl apply -f -`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    event-router crd | kubectl apply -f -\n  \
    event-router crd > crd/eventrouter.dev.yaml")]
pub struct CrdArgs {}

/// Prints the CRDs on stdout.
///
/// # Errors
/// When stdout is closed or encoding fails.
pub async fn run(_args: CrdArgs) -> anyhow::Result<ExitCode> {
    let yaml = event_router::operator::crd::crds_yaml()
        .map_err(|e| anyhow!("cannot encode the CRDs: {e}"))?;
    super::print_line(yaml.trim_end()).map_err(|e| anyhow!("cannot write to stdout: {e}"))?;
    Ok(ExitCode::SUCCESS)
}
