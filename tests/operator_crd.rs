//! The generated CRDs: `crd/` must match the types, and the example
//! resources in `deploy/examples/` must pass the CRD schemas (what
//! `kubectl apply -f` checks) and both standalone paths (`serve -f` and
//! `apply -f` admit through `router::validate`, then apply).

use std::path::Path;
use std::sync::Arc;

use event_router::operator::crd;
use event_router::resources::{self, Resource};
use event_router::{MemoryBroker, Router, RouterConfig};
use serde_json::{Value, json};

const EXAMPLES: [&str; 3] = ["subscription.yaml", "eventroute.yaml", "push-sink.yaml"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn example(name: &str) -> String {
    std::fs::read_to_string(root().join("deploy/examples").join(name))
        .unwrap_or_else(|e| panic!("read deploy/examples/{name}: {e}"))
}

/// The openAPIV3Schema of the CRD serving `kind`, as JSON.
fn schema_of(kind: &str) -> Value {
    let crd = crd::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    serde_json::to_value(
        version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .unwrap()
}

/// Schema errors of one YAML document against its kind's CRD.
fn schema_errors(doc: &Value) -> Vec<String> {
    let kind = doc["kind"].as_str().expect("kind");
    let validator = jsonschema::validator_for(&schema_of(kind)).expect("schema compiles");
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn documents(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .expect("yaml")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn crd_directory_matches_the_types() {
    let generated = crd::crds_yaml().unwrap();
    let committed = std::fs::read_to_string(root().join("crd/eventrouter.dev.yaml"))
        .expect("crd/eventrouter.dev.yaml exists");
    assert!(
        committed.trim_end() == generated.trim_end(),
        "crd/eventrouter.dev.yaml is out of date: regenerate it with\n  \
         cargo run -- crd > crd/eventrouter.dev.yaml"
    );
    // The committed file is also what a cluster would be given.
    let docs = documents(&committed);
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["metadata"]["name"], "subscriptions.eventrouter.dev");
    assert_eq!(docs[1]["metadata"]["name"], "eventroutes.eventrouter.dev");
}

#[test]
fn example_yamls_validate_against_the_crd_schemas() {
    for name in EXAMPLES {
        for doc in documents(&example(name)) {
            assert_eq!(doc["apiVersion"], "eventrouter.dev/v1alpha1", "{name}");
            let errors = schema_errors(&doc);
            assert!(errors.is_empty(), "{name}: {errors:#?}");
        }
    }
}

#[test]
fn schema_rejects_what_kubectl_would_refuse() {
    let base = json!({
        "apiVersion": "eventrouter.dev/v1alpha1",
        "kind": "Subscription",
        "metadata": {"name": "x"},
        "spec": {"topics": ["task.*"]}
    });
    assert!(schema_errors(&base).is_empty());
    let cases = [
        ("/spec/delivery", json!({"maxAttempts": 0})),
        ("/spec/delivery", json!({"mode": "sometimes"})),
        ("/spec/delivery", json!({"ackTimeout": "soon"})),
        ("/spec/delivery", json!({"backoff": {"jitter": 2}})),
        ("/spec/topics", json!(["task..x"])),
        ("/spec/sink", json!({"uri": "ftp://x"})),
    ];
    for (pointer, value) in cases {
        let mut doc = base.clone();
        *doc.pointer_mut("/spec").unwrap() = {
            let mut spec = doc["spec"].clone();
            let field = pointer.trim_start_matches("/spec/");
            spec[field] = value.clone();
            spec
        };
        assert!(
            !schema_errors(&doc).is_empty(),
            "{pointer} = {value} passed the schema"
        );
    }
    let route = json!({
        "apiVersion": "eventrouter.dev/v1alpha1",
        "kind": "EventRoute",
        "metadata": {"name": "r"},
        "spec": {"match": {"topics": ["a"]}, "actions": [{"drop": true, "copyTo": "b"}]}
    });
    assert!(
        !schema_errors(&route).is_empty(),
        "an action with two fields passed the schema"
    );
}

#[tokio::test]
async fn example_yamls_pass_the_standalone_paths() {
    let mut all = Vec::new();
    for name in EXAMPLES {
        let docs =
            resources::parse_documents(&example(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!docs.is_empty(), "{name}");
        event_router::router::validate(&docs).unwrap_or_else(|e| panic!("{name}: {e}"));
        all.extend(docs);
    }
    let broker = Arc::new(MemoryBroker::new(Default::default()));
    let router = Router::new(broker.clone(), RouterConfig::default());
    router
        .apply(&all)
        .await
        .expect("serve -f applies the examples");
    assert_eq!(router.route_names(), vec!["escalate-agent-failures"]);
    assert_eq!(router.sink_names(), vec!["billing-webhook"]);
    let names: Vec<String> = all
        .iter()
        .filter_map(|r| match r {
            Resource::Subscription(s) => Some(s.metadata.name.clone()),
            Resource::EventRoute(_) => None,
        })
        .collect();
    for name in names {
        event_router::Broker::subscription(&*broker, &name)
            .await
            .unwrap_or_else(|e| panic!("durable subscription {name}: {e}"));
    }
}

/// Whether `rules` grant `verb` on `group`/`resource`.
fn grants(rules: &Value, group: &str, resource: &str, verb: &str) -> bool {
    let has =
        |list: &Value, want: &str| list.as_array().is_some_and(|a| a.iter().any(|v| v == want));
    rules.as_array().is_some_and(|rules| {
        rules.iter().any(|r| {
            has(&r["apiGroups"], group) && has(&r["resources"], resource) && has(&r["verbs"], verb)
        })
    })
}

#[test]
fn rbac_grants_every_call_the_operator_makes_and_nothing_broader() {
    let text = std::fs::read_to_string(root().join("deploy/rbac/operator-rbac.yaml")).unwrap();
    let docs = documents(&text);
    let rules_of = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))["rules"]
            .clone()
    };
    let cluster = rules_of("ClusterRole");
    for resource in ["subscriptions", "eventroutes"] {
        for verb in ["get", "list", "watch", "patch"] {
            assert!(
                grants(&cluster, "eventrouter.dev", resource, verb),
                "{resource} {verb}"
            );
        }
        let status = format!("{resource}/status");
        assert!(
            grants(&cluster, "eventrouter.dev", &status, "patch"),
            "{status}"
        );
    }
    assert!(grants(&cluster, "events.k8s.io", "events", "create"));
    assert!(grants(&cluster, "events.k8s.io", "events", "patch"));
    let lease = rules_of("Role");
    for verb in ["get", "create", "update"] {
        assert!(
            grants(&lease, "coordination.k8s.io", "leases", verb),
            "leases {verb}"
        );
    }
    for rules in [&cluster, &lease] {
        let text = rules.to_string();
        assert!(
            !text.contains("\"*\"") && !text.contains("delete"),
            "{text}"
        );
    }
}

#[test]
fn documents_as_kubectl_writes_them_are_accepted() {
    // What `kubectl get subscription workers -o yaml` prints: extra metadata
    // and a status, which the standalone paths ignore.
    let yaml = r#"
apiVersion: eventrouter.dev/v1alpha1
kind: Subscription
metadata:
  name: workers
  namespace: agents
  labels: {team: a}
  annotations: {note: "x"}
  generation: 3
  finalizers: [eventrouter.dev/subscription-cleanup]
spec:
  topics: ["task.*"]
status:
  conditions: []
  pending: 4
"#;
    let docs = resources::parse_documents(yaml).unwrap();
    event_router::router::validate(&docs).unwrap();
    let Resource::Subscription(sub) = &docs[0] else {
        panic!("{docs:?}")
    };
    assert_eq!(sub.metadata.namespace.as_deref(), Some("agents"));
    let doc = documents(yaml).remove(0);
    assert!(schema_errors(&doc).is_empty(), "{:?}", schema_errors(&doc));
}
