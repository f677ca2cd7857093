//! The crate graph keeps its layering. Each rule is an absence: a crate
//! that must never reach another, directly or through any chain of normal
//! or build dependencies. The graph is read from `cargo metadata` (the
//! manifests as they are, no network), so adding a forbidden dependency to
//! any `Cargo.toml` fails `cargo test --workspace`, and the message names
//! the chain that reaches it.
//!
//! The graph holds the workspace crates and the crates they name (external
//! ones too, such as `sqlx`, as ends of chains: an external crate's own
//! dependencies are not followed), so a rule may forbid an external crate
//! that a workspace crate names, directly or through other workspace crates.
//!
//! Dev-dependencies are left out on purpose: a crate's own tests may start
//! a coordinator; its product code may not depend on one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::process::Command;

/// What one crate must never reach.
enum Forbidden {
    /// These crates.
    Crates(&'static [&'static str]),
    /// Any other crate of the workspace: a leaf every side may use.
    AnyWorkspaceCrate,
}

struct Rule {
    krate: &'static str,
    forbidden: Forbidden,
    why: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        krate: "trellis-shard",
        forbidden: Forbidden::Crates(&["trellis-coordinator"]),
        why: "a shard reaches the catalog through the coordinator's Membership service, never its code",
    },
    // The client routes its own reads and one-group commits with the
    // transaction core (ARCHITECTURE.md "One hop"): trellis-txn, never the
    // coordinator with its catalog.
    Rule {
        krate: "trellis-client",
        forbidden: Forbidden::Crates(&["trellis-coordinator", "trellis-shard"]),
        why: "the client library speaks the public API, and routes with trellis-txn",
    },
    Rule {
        krate: "trellis-loadtest",
        forbidden: Forbidden::Crates(&["trellis-coordinator", "trellis-shard"]),
        why: "the load tester measures through the public API; placement is in trellis-types",
    },
    Rule {
        krate: "trellis-cdc",
        forbidden: Forbidden::Crates(&["trellis-coordinator", "trellis-shard", "sqlx"]),
        why: "the change feed's sinks take the public API's events; the feed and its cursor are the caller's",
    },
    Rule {
        krate: "trellis-txn",
        forbidden: Forbidden::Crates(&["trellis-coordinator", "trellis-shard", "sqlx"]),
        why: "the transaction core runs in clients too: no catalog, no sqlx, no shard code",
    },
    Rule {
        krate: "trellis-coordinator",
        forbidden: Forbidden::Crates(&["trellis-shard"]),
        why: "the coordinator talks to shards over gRPC, never through their code",
    },
    Rule {
        krate: "trellis-types",
        forbidden: Forbidden::AnyWorkspaceCrate,
        why: "the vocabulary every side shares",
    },
    Rule {
        krate: "trellis-proto",
        forbidden: Forbidden::AnyWorkspaceCrate,
        why: "the wire contract holds no logic",
    },
    Rule {
        krate: "trellis-checker",
        forbidden: Forbidden::AnyWorkspaceCrate,
        why: "harnesses of any crate use the history checker",
    },
    Rule {
        krate: "trellis-net",
        forbidden: Forbidden::AnyWorkspaceCrate,
        why: "every process dials through it",
    },
    Rule {
        krate: "trellis-metrics",
        forbidden: Forbidden::AnyWorkspaceCrate,
        why: "every process renders its metrics with it",
    },
];

/// Workspace crate → the crates it depends on (normal and build
/// dependencies), as the manifests say. Only workspace crates are keys.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn workspace_graph() -> Graph {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace root")
        .join("Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"]
        .as_array()
        .expect("cargo metadata lists packages");
    packages
        .iter()
        .map(|p| {
            let name = p["name"]
                .as_str()
                .expect("a package has a name")
                .to_string();
            let deps = p["dependencies"]
                .as_array()
                .expect("a package lists its dependencies")
                .iter()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .map(|d| {
                    d["name"]
                        .as_str()
                        .expect("a dependency has a name")
                        .to_string()
                })
                .collect();
            (name, deps)
        })
        .collect()
}

/// The chain from `from` to every workspace crate it reaches (breadth
/// first, so each chain is a shortest one).
fn reached(graph: &Graph, from: &str) -> BTreeMap<String, Vec<String>> {
    let mut chains = BTreeMap::new();
    let mut queue = VecDeque::from([vec![from.to_string()]]);
    while let Some(chain) = queue.pop_front() {
        let last = chain.last().expect("a chain is never empty");
        for next in graph.get(last).into_iter().flatten() {
            if next != from && !chains.contains_key(next) {
                let mut longer = chain.clone();
                longer.push(next.clone());
                chains.insert(next.clone(), longer.clone());
                queue.push_back(longer);
            }
        }
    }
    chains
}

/// Every rule the graph breaks, in words.
fn violations(graph: &Graph, rules: &[Rule]) -> Vec<String> {
    let mut out = Vec::new();
    for rule in rules {
        if !graph.contains_key(rule.krate) {
            out.push(format!(
                "{} is not a workspace crate any more: update this rule",
                rule.krate
            ));
            continue;
        }
        for (target, chain) in reached(graph, rule.krate) {
            let forbidden = match &rule.forbidden {
                Forbidden::Crates(names) => names.contains(&target.as_str()),
                Forbidden::AnyWorkspaceCrate => graph.contains_key(&target),
            };
            if forbidden {
                out.push(format!(
                    "{} must not depend on {target} ({}), but {}",
                    rule.krate,
                    rule.why,
                    chain.join(" -> ")
                ));
            }
        }
    }
    out
}

#[test]
fn no_crate_reaches_what_its_layer_forbids() {
    let graph = workspace_graph();
    let broken = violations(&graph, RULES);
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The check can fail: the same graph with the dependency this rule was
/// written against (loadtest on the coordinator, for `assign_slots`) added
/// back, directly and through the client, is refused, and the message names
/// the chain.
#[test]
fn a_forbidden_dependency_is_refused_with_its_chain() {
    let graph = workspace_graph();
    let mut direct = graph.clone();
    direct
        .get_mut("trellis-loadtest")
        .expect("loadtest is a workspace crate")
        .insert("trellis-coordinator".to_string());
    let broken = violations(&direct, RULES);
    assert!(
        broken
            .iter()
            .any(|v| v.ends_with("trellis-loadtest -> trellis-coordinator")),
        "{broken:?}"
    );

    let mut indirect = graph;
    indirect
        .get_mut("trellis-loadtest")
        .expect("loadtest is a workspace crate")
        .remove("trellis-coordinator");
    indirect
        .get_mut("trellis-client")
        .expect("client is a workspace crate")
        .insert("trellis-coordinator".to_string());
    let broken = violations(&indirect, RULES);
    assert!(
        broken
            .iter()
            .any(|v| v.ends_with("trellis-loadtest -> trellis-client -> trellis-coordinator")),
        "{broken:?}"
    );
}

/// An external crate can be forbidden too: the transaction core naming
/// sqlx, or reaching it through the coordinator (which names it), is
/// refused with the chain; an external crate is not a workspace crate to
/// the leaf rules.
#[test]
fn a_forbidden_external_crate_is_refused_with_its_chain() {
    let graph = workspace_graph();
    assert!(
        graph["trellis-coordinator"].contains("sqlx"),
        "the graph holds external crates: the coordinator names sqlx"
    );
    let mut direct = graph.clone();
    direct
        .get_mut("trellis-txn")
        .expect("txn is a workspace crate")
        .insert("sqlx".to_string());
    let broken = violations(&direct, RULES);
    assert!(
        broken.iter().any(|v| v.ends_with("trellis-txn -> sqlx")),
        "{broken:?}"
    );

    let mut indirect = graph.clone();
    indirect
        .get_mut("trellis-txn")
        .expect("txn is a workspace crate")
        .insert("trellis-coordinator".to_string());
    let broken = violations(&indirect, RULES);
    assert!(
        broken
            .iter()
            .any(|v| v.ends_with("trellis-txn -> trellis-coordinator -> sqlx")),
        "{broken:?}"
    );

    // The history checker is a leaf the transaction core does not reach.
    let mut leaf = graph;
    leaf.get_mut("trellis-checker")
        .expect("checker is a workspace crate")
        .insert("sqlx".to_string());
    let broken = violations(&leaf, RULES);
    assert!(
        broken.is_empty(),
        "a leaf crate may name external crates: {broken:?}"
    );
}
