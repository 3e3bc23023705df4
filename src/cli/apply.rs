//! `event-router apply -f FILE...`: write Subscription and EventRoute
//! documents into the routing config in Redis, as the operator does, so
//! that every `serve --redis` replica picks them up without a restart.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use event_router::operator::store::{self, Change, ConfigStore};
use event_router::resources::{self, Resource};

/// Apply Subscription/EventRoute YAML to the replicas sharing a Redis.
///
/// Accepts the same documents as `kubectl apply -f` (apiVersion
/// eventrouter.dev/v1alpha1, kind, metadata, spec) and `serve -f`. Every
/// document is checked first (patterns, regexes and filters compile,
/// policies are in range, a durable group belongs to one Subscription);
/// nothing is written unless all pass. Running replicas reload within a
/// moment (pub/sub notification, or their periodic poll). `--delete`
/// removes the documents instead.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    event-router apply --redis redis://127.0.0.1:6379/ -f deploy/examples/subscription.yaml\n  \
    event-router apply --redis redis://127.0.0.1:6379/ -f routes.yaml -f subs.yaml --dry-run\n  \
    event-router apply --redis redis://127.0.0.1:6379/ -f routes.yaml --delete")]
pub struct ApplyArgs {
    /// Subscription/EventRoute YAML file (repeatable).
    #[arg(short = 'f', long = "file", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,

    /// The Redis the replicas share, e.g. redis://127.0.0.1:6379/.
    #[arg(
        long,
        env = "EVENT_ROUTER_REDIS",
        value_name = "URL",
        required_unless_present = "dry_run"
    )]
    pub redis: Option<String>,

    /// Prefix of every Redis key, as given to the replicas.
    #[arg(
        long,
        env = "EVENT_ROUTER_REDIS_KEY_PREFIX",
        value_name = "PREFIX",
        default_value = "er"
    )]
    pub redis_key_prefix: String,

    /// Namespace of documents that name none [default: default].
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Only check the documents; write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Remove the documents from the routing config instead (like
    /// `kubectl delete -f`). A Subscription's durable group and its queued
    /// events stay until `DELETE /api/v1/subscriptions/{name}`.
    #[arg(long, conflicts_with = "dry_run")]
    pub delete: bool,
}

/// Validates and writes the documents; prints one line per document.
///
/// # Errors
/// An unreadable or invalid file (named), or Redis unreachable.
pub async fn run(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    super::init_client_logging();
    let docs = load(&args)?;
    if args.delete {
        return delete(&args, &docs).await;
    }
    event_router::router::validate(&docs).map_err(|e| anyhow!("{e}"))?;
    check_groups(&docs, &[])?;
    if args.dry_run {
        for doc in &docs {
            super::print_line(&format!("{} valid (dry run)", describe(doc)))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let store = connect(&args).await?;
    let stored = store
        .load()
        .await
        .context("cannot read the routing config")?;
    check_groups(&docs, &stored.resources)?;
    for doc in &docs {
        let change = store
            .put(doc)
            .await
            .with_context(|| format!("cannot write {}", describe(doc)))?;
        let word = match change {
            Change::Created => "created",
            Change::Configured => "configured",
            Change::Unchanged | Change::Deleted => "unchanged",
        };
        super::print_line(&format!("{} {word}", describe(doc)))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn connect(args: &ApplyArgs) -> anyhow::Result<ConfigStore> {
    let url = args
        .redis
        .as_deref()
        .ok_or_else(|| anyhow!("--redis URL is required (or EVENT_ROUTER_REDIS)"))?;
    ConfigStore::connect(url, &args.redis_key_prefix)
        .await
        .with_context(|| format!("cannot connect to redis at {}", redact(url)))
}

/// Removes the documents' keys from the config (the specs need not be
/// valid: only kind, namespace and name count).
async fn delete(args: &ApplyArgs, docs: &[Resource]) -> anyhow::Result<ExitCode> {
    let store = connect(args).await?;
    for doc in docs {
        let change = store
            .remove(&store::key_of(doc))
            .await
            .with_context(|| format!("cannot delete {}", describe(doc)))?;
        let word = if change == Change::Deleted {
            "deleted"
        } else {
            "not found"
        };
        super::print_line(&format!("{} {word}", describe(doc)))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn load(args: &ApplyArgs) -> anyhow::Result<Vec<Resource>> {
    let mut docs = Vec::new();
    for path in &args.files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read resource file {}", path.display()))?;
        let parsed = resources::parse_documents(&text)
            .map_err(|e| anyhow!("resource file {}: {e}", path.display()))?;
        for mut doc in parsed {
            let meta = match &mut doc {
                Resource::Subscription(s) => &mut s.metadata,
                Resource::EventRoute(r) => &mut r.metadata,
            };
            if meta.namespace.is_none() {
                meta.namespace = Some(args.namespace.clone().unwrap_or_else(|| "default".into()));
            }
            docs.push(doc);
        }
    }
    if docs.is_empty() {
        bail!("the files hold no documents");
    }
    Ok(docs)
}

/// Every durable group must belong to one Subscription, among the new
/// documents and against those already stored under other keys.
fn check_groups(docs: &[Resource], stored: &[(String, Resource)]) -> anyhow::Result<()> {
    let mut owners: Vec<(String, String)> = stored
        .iter()
        .filter_map(|(key, r)| group(r).map(|g| (g, key.clone())))
        .collect();
    for doc in docs {
        let Some(g) = group(doc) else { continue };
        let key = store::key_of(doc);
        if let Some((_, other)) = owners.iter().find(|(og, ok)| *og == g && *ok != key) {
            bail!(
                "{}: durable group {g:?} is already used by {other}; set spec.delivery.group to another name",
                describe(doc)
            );
        }
        owners.push((g, key));
    }
    Ok(())
}

fn group(r: &Resource) -> Option<String> {
    match r {
        Resource::Subscription(s) => Some(
            s.spec
                .delivery
                .group
                .clone()
                .unwrap_or_else(|| s.metadata.name.clone()),
        ),
        Resource::EventRoute(_) => None,
    }
}

/// `subscription.eventrouter.dev/name`, as kubectl prints it.
fn describe(r: &Resource) -> String {
    match r {
        Resource::Subscription(s) => format!("subscription.eventrouter.dev/{}", s.metadata.name),
        Resource::EventRoute(e) => format!("eventroute.eventrouter.dev/{}", e.metadata.name),
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_string(),
    }
}
